"""The official evaluation preprocessing on PIL images, to a normalised numpy array. No framework.

Geometry (:func:`resize_center_crop`), as the official ``microsoft/CvT`` evaluation (torchvision on PIL):

* ``crop_pct < 1`` (the 224 checkpoints, 0.875): resize the short side to ``int(224 / 0.875) = 256``
  (bicubic; the long side becomes ``int(256 * long / short)``), then centre-crop 224 at offset
  ``int(round((side - 224) / 2))`` (Python's round, half to even, as torchvision's ``CenterCrop``).
* ``crop_pct == 1`` (the 384 checkpoints): resize to 384x384 ignoring the aspect ratio, no crop.

Then ``/255`` and ImageNet mean/std (:func:`normalize`): ``(3, H, W)`` float32, channels first, what every
framework's model here takes after a transpose at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, to_rgb
from .spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resized_size(wh: tuple[int, int], size: int, crop_pct: float) -> tuple[int, int]:
    """``(width, height)`` after the resize step (before the crop) for an image of ``wh``."""
    if crop_pct >= 1.0:
        return size, size
    scale = int(size / crop_pct)
    w, h = wh
    return (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)


def resize_center_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str = "bicubic") -> Image.Image:
    """The official geometry (see the module docstring) on a PIL image -> ``size x size`` PIL image."""
    new_w, new_h = resized_size(img.size, size, crop_pct)
    img = img.resize((new_w, new_h), RESAMPLE[interpolation])
    if crop_pct >= 1.0:
        return img
    left = round((new_w - size) / 2.0)  # round half to even, as torchvision's CenterCrop
    top = round((new_h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def normalize(
    img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """RGB PIL image -> ``(3, H, W)`` float32: ``/255``, then ``(x - mean) / std`` per channel."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((arr - m) / s).transpose(2, 0, 1))


def denormalize(
    x: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Image.Image:
    """Inverse of :func:`normalize`: ``(3, H, W)`` normalised array -> RGB PIL image (for display)."""
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    arr = np.clip(np.rint((np.asarray(x, dtype=np.float32) * s + m) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr.transpose(1, 2, 0), "RGB")


@dataclass(frozen=True)
class EvalTransform:
    """Picklable (data-loader workers) ``PIL image -> (3, img_size, img_size)`` float32 array."""

    pre: EvalPreprocess
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # bound on the resized image (extreme aspect ratios)

    def __call__(self, img: Image.Image) -> np.ndarray:
        w, h = resized_size(img.size, self.pre.img_size, self.pre.crop_pct)
        if self.max_pixels is not None and w * h > self.max_pixels:
            raise ImageError(f"extreme aspect ratio: {img.size[0]}x{img.size[1]} would be resized to {w}x{h}")
        img = resize_center_crop(to_rgb(img), self.pre.img_size, self.pre.crop_pct, self.pre.interpolation)
        return normalize(img, self.pre.mean, self.pre.std)

"""Image decoding and the official evaluation preprocessing, on PIL images (no torchvision needed).

224 checkpoints: resize the short side to ``int(224 / 0.875) = 256`` (bicubic; the long side becomes
``int(256 * long / short)``), centre-crop 224 at offset ``int(round((size - 224) / 2))`` (torchvision's
semantics, which the official evaluation used). 384 checkpoints: resize to 384x384 ignoring aspect, no crop.
Then ``/255`` and ImageNet mean/std.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An input that is not a usable image; the message starts with the path."""


@dataclass(frozen=True)
class EvalPreprocess:
    """How a checkpoint's inputs are prepared (travels with the weights)."""

    img_size: int = 224
    crop_pct: float = 0.875  # < 1: resize short side to img_size / crop_pct, centre crop; 1: squash
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}  # fmt: skip


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as RGB; :class:`ImageError` (one line, naming the file) when it is not usable."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{path}: {e}") from None


def resize_center_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str = "bicubic") -> Image.Image:
    """The official geometry (see module docstring) on a PIL image."""
    resample = _RESAMPLE[interpolation]
    if crop_pct >= 1.0:
        return img.resize((size, size), resample)
    scale = int(size / crop_pct)
    w, h = img.size
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    img = img.resize((new_w, new_h), resample)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> normalised ``(3, H, W)`` float32 tensor."""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).contiguous()


def build_eval_transform(pre: EvalPreprocess) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> ``(3, img_size, img_size)`` tensor, exactly as the official evaluation."""

    def transform(img: Image.Image) -> torch.Tensor:
        img = resize_center_crop(img.convert("RGB"), pre.img_size, pre.crop_pct, pre.interpolation)
        return to_tensor(img, pre.mean, pre.std)

    return transform

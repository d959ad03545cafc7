"""Image decoding and the official evaluation preprocessing, on PIL images (no torchvision needed).

Geometry (:func:`resize_center_crop`), as the official ``microsoft/CvT`` evaluation (torchvision on PIL):

* ``crop_pct < 1`` (the 224 checkpoints, 0.875): resize the short side to ``int(224 / 0.875) = 256``
  (bicubic; the long side becomes ``int(256 * long / short)``), then centre-crop 224 at offset
  ``int(round((side - 224) / 2))`` (Python's round, half to even, as torchvision's ``CenterCrop``).
* ``crop_pct == 1`` (the 384 checkpoints): resize to 384x384 ignoring the aspect ratio, no crop.

Then ``/255`` and ImageNet mean/std: ``(3, H, W)`` float32.

Decoding (:func:`load_image`, :func:`to_rgb`) always yields 8-bit RGB: EXIF orientation applied; grayscale,
palette and CMYK converted; 16-bit and 32-bit integer images scaled by ``>> 8`` (what Pillow itself does
for 16-bit RGB PNGs; its ``convert("RGB")`` would clip them); **transparency composited on white** (what
transformers' ``convert_to_rgb`` does, and how a browser shows the image: the colour under fully
transparent pixels is undefined, often black). Files above ``max_pixels`` (default 100 megapixels) are
refused from their header, before decoding.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif")
)  # fmt: skip
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageError(ValueError):
    """An input that is not a usable image; the message starts with the path and gives the reason."""


@dataclass(frozen=True)
class EvalPreprocess:
    """How a checkpoint's inputs are prepared (see the module docstring for the geometry)."""

    img_size: int = 224
    crop_pct: float = 0.875  # < 1: resize short side to int(img_size / crop_pct), centre crop; 1: squash
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.img_size < 1:
            raise ValueError(f"img_size: must be >= 1, got {self.img_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct: must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation: {self.interpolation!r} is not one of {tuple(_RESAMPLE)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``cvt train`` stores in ``CvTConfig.extra["preprocess"]``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalPreprocess:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

    @classmethod
    def for_size(cls, img_size: int) -> EvalPreprocess:
        """The released checkpoints' rule: crop 0.875 below 384, squash at 384 and above."""
        return cls(img_size=img_size, crop_pct=0.875 if img_size < 384 else 1.0)

    @classmethod
    def from_hf_processor(cls, d: dict[str, Any]) -> EvalPreprocess:
        """From an HF ``preprocessor_config.json`` of a ConvNext/CvT image processor.

        ``size`` may be an int, ``{"shortest_edge": s}`` or ``{"height": h, "width": w}`` (square only);
        as in transformers, ``crop_pct`` (default 224/256) only applies below 384.
        """
        size = d.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height") or size.get("width")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"preprocessor_config size: unsupported value {d.get('size')!r}")
        crop = float(d.get("crop_pct") or 224 / 256) if size < 384 else 1.0
        names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
        kwargs: dict[str, Any] = {"img_size": size, "crop_pct": crop}
        kwargs["interpolation"] = names.get(d.get("resample", 3), "bicubic")
        if d.get("do_normalize", True):
            kwargs["mean"] = tuple(d.get("image_mean", IMAGENET_MEAN))
            kwargs["std"] = tuple(d.get("image_std", IMAGENET_STD))
        else:
            kwargs["mean"], kwargs["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(**kwargs)


# ---------------------------------------------------------------------------- decoding
def list_images(root: str | os.PathLike[str], onerror: Callable[[OSError], None] | None = None) -> list[str]:
    """Image files under ``root`` by extension, recursively, in sorted order; hidden files and folders skipped,
    symlinked folders followed. ``onerror`` receives folders that cannot be listed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, name)
            for name in sorted(filenames)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    return found


def load_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file as 8-bit RGB (see the module docstring); first frame of animations.

    Raises :class:`ImageError` ``"<path>: <reason>"`` for a missing, unreadable, empty, non-image, corrupt,
    truncated or too large (``> max_pixels``; ``None`` = no limit but Pillow's own) file.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{path}: is a directory")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise ImageError(f"{path}: not a regular file")
        if st.st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path) as im:
                check_size(im, max_pixels, path)
                im.load()
                return to_rgb(im)
    except ImageError as e:
        msg = str(e)
        raise ImageError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large, possible decompression bomb ({e})") from None
    except MemoryError:
        raise ImageError(f"{path}: too large to decode (out of memory)") from None
    except Exception as e:  # decoders raise anything on corrupt data; one file must not stop a batch
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ImageError(f"{path}: corrupt or truncated image ({msg})") from None


def check_size(img: Image.Image, max_pixels: int | None, name: object = "image") -> None:
    """Raise :class:`ImageError` if ``img`` (header only is enough) has more than ``max_pixels`` pixels."""
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{name}: too large ({w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,})")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF orientation, 16-bit scaling, palette, CMYK, alpha on white."""
    try:
        if img.getexif().get(0x0112, 1) != 1:  # orientation tag
            img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"unsupported image mode {mode!r} ({e})") from None


def to_pil(obj: Any) -> Image.Image:
    """A PIL image, a numpy array or a uint8 tensor -> 8-bit RGB PIL image.

    Arrays: ``(H, W)`` or ``(H, W, C)`` with ``C`` in 1, 3, 4 (RGBA composited on white), dtype uint8
    (uint16 is scaled by ``>> 8``). Tensors: uint8 ``(C, H, W)`` (torchvision's ``read_image`` layout)
    or ``(H, W)``. Raises :class:`ImageError` for anything else.
    """
    if isinstance(obj, Image.Image):
        return to_rgb(obj)
    if isinstance(obj, torch.Tensor):
        if obj.dtype != torch.uint8 or obj.ndim not in (2, 3):
            raise ImageError(f"image tensors must be uint8 (C, H, W) or (H, W), got {obj.dtype} {tuple(obj.shape)}")
        arr = obj.detach().cpu().numpy()
        obj = arr if arr.ndim == 2 else np.moveaxis(arr, 0, -1)
    if not isinstance(obj, np.ndarray):
        raise ImageError(f"expected a path, PIL image, numpy array or tensor, got {type(obj).__name__}")
    arr = obj
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"arrays must be (H, W) or (H, W, C) with C in 1, 3, 4; got shape {obj.shape}")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8 (0..255) or uint16; got {arr.dtype} (scale and cast first)")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else arr.shape[-1]]
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode))


# ---------------------------------------------------------------------------- geometry and tensors
def resized_size(wh: tuple[int, int], size: int, crop_pct: float) -> tuple[int, int]:
    """``(width, height)`` after the resize step (before the crop) for an image of ``wh``."""
    if crop_pct >= 1.0:
        return size, size
    scale = int(size / crop_pct)
    w, h = wh
    return (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)


def resize_center_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str = "bicubic") -> Image.Image:
    """The official geometry (see the module docstring) on a PIL image -> ``size x size`` PIL image."""
    resample = _RESAMPLE[interpolation]
    new_w, new_h = resized_size(img.size, size, crop_pct)
    img = img.resize((new_w, new_h), resample)
    if crop_pct >= 1.0:
        return img
    left = round((new_w - size) / 2.0)  # round half to even, as torchvision's CenterCrop
    top = round((new_h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> normalised ``(3, H, W)`` float32 tensor (``/255``, then ``(x - mean) / std``)."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).contiguous()


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Image.Image:
    """Inverse of :func:`to_tensor`: ``(3, H, W)`` normalised tensor -> RGB PIL image (for display)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    arr = ((x.detach().float().cpu() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


@dataclass(frozen=True)
class EvalTransform:
    """Picklable (DataLoader workers) ``image -> (3, img_size, img_size)`` float32 tensor."""

    pre: EvalPreprocess
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # bound on the resized image (extreme aspect ratios)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = resized_size(img.size, self.pre.img_size, self.pre.crop_pct)
        if self.max_pixels is not None and w * h > self.max_pixels:
            raise ImageError(f"extreme aspect ratio: {img.size[0]}x{img.size[1]} would be resized to {w}x{h}")
        img = resize_center_crop(to_rgb(img), self.pre.img_size, self.pre.crop_pct, self.pre.interpolation)
        return to_tensor(img, self.pre.mean, self.pre.std)


def build_eval_transform(pre: EvalPreprocess) -> EvalTransform:
    """PIL image (any mode) -> ``(3, img_size, img_size)`` tensor, exactly as the official evaluation."""
    return EvalTransform(pre)

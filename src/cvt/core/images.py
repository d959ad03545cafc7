"""Decoding image files and in-memory images to 8-bit RGB PIL images, and finding image files. No framework.

Decoding (:func:`load_image`, :func:`to_rgb`) always yields 8-bit RGB: EXIF orientation applied; grayscale,
palette and CMYK converted; 16-bit and 32-bit integer images scaled by ``>> 8`` (what Pillow itself does
for 16-bit RGB PNGs; its ``convert("RGB")`` would clip them); **transparency composited on white** (what
transformers' ``convert_to_rgb`` does, and how a browser shows the image: the colour under fully
transparent pixels is undefined, often black). Files above ``max_pixels`` (default 100 megapixels) are
refused from their header, before decoding.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, first_line

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif")
)  # fmt: skip
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def walk_files(
    root: str | os.PathLike[str],
    onerror: Callable[[OSError], None] | None = None,
    *,
    seen_dirs: set[tuple[int, int]] | None = None,
    seen_files: set[tuple[int, int]] | None = None,
) -> Iterator[str]:
    """Every file under ``root`` once, in sorted order, hidden files and folders skipped.

    Non-directories are all yielded (FIFOs and dangling links too: whoever opens them reports the problem for
    that one path).

    Symlinked folders are followed, but each real directory is entered once (tracked by device and inode), so a
    link loop or a link back to an ancestor cannot make the walk endless or repeat files; each real file is yielded
    once too (the first name met in sorted order), however many links point at it. ``onerror`` receives folders
    that cannot be listed. ``seen_dirs`` / ``seen_files`` (``(st_dev, st_ino)`` sets, updated) make several walks
    one: see :func:`list_class_images`.
    """
    seen_dirs = set() if seen_dirs is None else seen_dirs
    seen_files = set() if seen_files is None else seen_files
    stack = [os.fspath(root)]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    subdirs.append(entry.path)
                    continue
                fst = entry.stat()
            except OSError:  # a dangling link or a vanished file: yielded, so its reader reports it
                yield entry.path
                continue
            fkey = (fst.st_dev, fst.st_ino)
            if fkey not in seen_files:
                seen_files.add(fkey)
                yield entry.path
        stack.extend(reversed(subdirs))  # depth first, in sorted order


def list_images(root: str | os.PathLike[str], onerror: Callable[[OSError], None] | None = None) -> list[str]:
    """Image files (by extension) under ``root``: :func:`walk_files` order and rules, loop-safe."""
    return [p for p in walk_files(root, onerror) if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]


def list_class_images(
    root: str | os.PathLike[str], onerror: Callable[[OSError], None] | None = None
) -> dict[str, list[str]]:
    """``{class folder name: [image paths]}`` for ``root/<class>/**/<image>``, every class folder included (empty
    ones map to ``[]``), in sorted order, hidden folders skipped.

    One walk for the whole data set: a real file is listed once, under the first class (in sorted order) that
    reaches it, and no class walk enters ``root`` or another class's folder through a link (``cat/up -> ..``
    would otherwise list every class's images again as ``cat``).
    """
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        try:
            if not entry.name.startswith(".") and entry.is_dir():
                st = entry.stat()
                classes.append((entry.name, entry.path, (st.st_dev, st.st_ino)))
        except OSError as e:
            if onerror is not None:
                onerror(e)
    st = os.stat(root)
    fenced = {(st.st_dev, st.st_ino)} | {key for _, _, key in classes}
    seen_files: set[tuple[int, int]] = set()
    found = {}
    for name, path, key in classes:
        walk = walk_files(path, onerror, seen_dirs=fenced - {key}, seen_files=seen_files)
        found[name] = [p for p in walk if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
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
        msg = first_line(e, 160)
        raise ImageError(f"{path}: corrupt or truncated image ({msg})") from None


def check_size(img: Image.Image, max_pixels: int | None, name: object = "image") -> None:
    """Raise :class:`ImageError` if ``img`` (header only is enough) has no pixels or more than ``max_pixels``."""
    w, h = img.size
    check_not_empty(w, h, name)
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{name}: too large ({w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,})")


def check_not_empty(width: int, height: int, name: object = "image") -> None:
    """Raise :class:`ImageError` for an image without pixels (0 wide or 0 high): nothing to resize or classify
    (the resize rule divides by the short side)."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF orientation, 16-bit scaling, palette, CMYK, alpha on white.

    Raises :class:`ImageError` for an image without pixels (:func:`check_not_empty`)."""
    check_not_empty(*img.size)
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


ACCEPTED_IMAGES = (
    "a PIL image, or an array / tensor (H, W) or (H, W, C) with C in 1, 3, 4 (numpy, TensorFlow, JAX, Keras), "
    "(C, H, W) for torch tensors; dtype uint8, uint16 (>> 8) or float in [0, 1] (x 255, truncated as torchvision)"
)


def image_framework(obj: Any) -> str:
    """The library that made an array or tensor, by its class's module: ``"torch"``, ``"tensorflow"``, ``"jax"``,
    ``"numpy"`` ... (``jaxlib`` counts as ``jax``). Why not the shape: a (3, 4, 3) image is both layouts."""
    root = type(obj).__module__.split(".")[0]
    return {"jaxlib": "jax", "keras": "keras", "tensorflow": "tensorflow"}.get(root, root)


def _host_array(obj: Any) -> np.ndarray:
    """Any array or tensor on the host as numpy (torch: detached, on the CPU; bfloat16 widened to float32)."""
    if hasattr(obj, "detach"):  # torch, without importing it
        obj = obj.detach().cpu()
        if str(obj.dtype) == "torch.bfloat16":
            obj = obj.float()
        return np.asarray(obj.numpy())
    arr = np.asarray(obj.numpy() if hasattr(obj, "numpy") and not isinstance(obj, np.ndarray) else obj)
    return arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr


def _float_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 by ``x * 255`` truncated (torchvision's ``to_pil_image``: ``mul(255).byte()``;
    exact inverse of ``x / 255`` for every 8-bit value)."""
    if arr.size:
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{what}: float pixels must be in [0, 1], got {lo:.4g}..{hi:.4g} "
                "(for 0..255 values cast to uint8 first)"
            )
    return (arr * arr.dtype.type(255)).astype(np.uint8)


def to_pil(obj: Any) -> Image.Image:
    """A PIL image, or one image as an array or tensor -> 8-bit RGB PIL image.

    Layout by the library that made it (:func:`image_framework`), never by guessing from the shape: torch tensors
    are ``(C, H, W)`` (torchvision's convention), numpy / TensorFlow / JAX / Keras arrays ``(H, W, C)``; ``(H, W)``
    is grayscale for all; ``C`` in 1, 3, 4 (RGBA composited on white). dtypes: uint8; uint16 scaled by ``>> 8``;
    float in [0, 1] scaled by ``x * 255`` and truncated, as torchvision's ``to_pil_image`` (so ``x / 255`` images
    come back exactly). Raises :class:`ImageError` (one line listing :data:`ACCEPTED_IMAGES`) for anything else.
    """
    if isinstance(obj, Image.Image):
        return to_rgb(obj)
    if not (isinstance(obj, np.ndarray) or hasattr(obj, "__array__") or hasattr(obj, "numpy")):
        raise ImageError(f"expected a path or an image: {ACCEPTED_IMAGES}; got {type(obj).__name__}")
    framework = image_framework(obj)
    arr = _host_array(obj)
    what = f"{framework} image {arr.dtype} {tuple(arr.shape)}"
    if framework == "torch" and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        hint = " (looks channels-first: transpose to (H, W, C))" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ImageError(f"{what}: unsupported layout{hint}; accepted: {ACCEPTED_IMAGES}")
    check_not_empty(arr.shape[1], arr.shape[0], what)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr, what)
    if arr.dtype != np.uint8:
        raise ImageError(f"{what}: unsupported dtype; accepted: {ACCEPTED_IMAGES}")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else arr.shape[-1]]
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode))

"""Uploaded bytes -> 8-bit RGB PIL image, refusing what :func:`cvt.core.images.load_image` refuses for files.

The same decoding rules as files (EXIF orientation, 16-bit scaling, alpha on white: :func:`cvt.core.images.to_rgb`),
so an upload is classified exactly like the same file given to ``cvt predict``. Each failure is an
:class:`~cvt.core.errors.ImageError` subclass carrying the HTTP status the server answers with.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..core.errors import ImageError, first_line
from ..core.images import check_size, to_rgb


class UploadError(ImageError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    status = 400


class NotAnImage(UploadError):
    status = 415


class ImageTooLarge(UploadError):
    status = 413


def decode_image(data: bytes, max_pixels: int | None, name: str = "upload") -> Image.Image:
    """``data`` (a whole image file) -> RGB PIL image; raises :class:`UploadError` ``"<name>: <reason>"``."""
    if not data:
        raise UploadError(f"{name}: empty body (0 bytes): send the image as multipart field 'file' or as the body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(io.BytesIO(data)) as im:
                try:
                    check_size(im, max_pixels, name)  # from the header, before any pixel is decoded
                except ImageError as e:
                    raise ImageTooLarge(str(e)) from None
                im.load()
                return to_rgb(im)
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise NotAnImage(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: too large, possible decompression bomb ({first_line(e, 160)})") from None
    except MemoryError:
        raise ImageTooLarge(f"{name}: too large to decode (out of memory)") from None
    except Exception as e:  # decoders raise anything on corrupt data; one upload must not stop the server
        raise UploadError(f"{name}: corrupt or truncated image ({first_line(e, 160)})") from None

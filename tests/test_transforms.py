"""Preprocessing = the official evaluation pipeline on real photos; decoding of awkward and bad files."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvt.core.errors import ImageError
from cvt.core.images import load_image, to_pil, to_rgb
from cvt.core.spec import EvalPreprocess
from cvt.data.transforms import build_eval_transform, denormalize

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def photo_paths() -> dict[str, Path]:
    """Real photos shipped inside the scikit-image and scikit-learn wheels (no download)."""
    roots = {}
    for pkg in ("skimage", "sklearn"):  # located, not imported (importing sklearn takes seconds)
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            pytest.skip(f"{pkg} is not installed")
        roots[pkg] = Path(spec.origin).parent
    sk, sl = roots["skimage"] / "data", roots["sklearn"] / "datasets" / "images"
    files = {n: sk / n for n in ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg")}
    files.update({n: sl / n for n in ("china.jpg", "flower.jpg")})
    return files


PHOTOS = ["chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "china.jpg", "flower.jpg"]


def official(img: Image.Image, size: int, crop_offset=lambda n: round(n / 2.0)) -> torch.Tensor:
    """torchvision semantics, written out: Resize(int(size/0.875)) + CenterCrop(size) for 224, Resize((s, s))
    for 384, bicubic on PIL; ToTensor (uint8 bytes / 255) and Normalize (sub mean, div std)."""
    if size < 384:
        short = int(size / 0.875)
        w, h = img.size
        ow, oh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize((ow, oh), Image.BICUBIC)
        left, top = crop_offset(ow - size), crop_offset(oh - size)
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
    x = x.float().div(255)
    return x.sub_(MEAN[:, None, None]).div_(STD[:, None, None])


def hf_processor(size: int):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "ConvNextImageProcessorPil", None) or transformers.ConvNextImageProcessor
    return cls(
        size={"shortest_edge": size}, crop_pct=0.875, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip


@pytest.mark.parametrize("size", [224, 384])
def test_matches_official_pipeline_on_photos(size):
    tf = build_eval_transform(EvalPreprocess.for_size(size))
    for name, path in photo_paths().items():
        img = Image.open(path).convert("RGB")
        ours = tf(img)
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, official(img, size), rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("size", [224, 384])
def test_transformers_processor_agrees_except_one_pixel_crop(size):
    """transformers floors the centre-crop offset, torchvision rounds it: on 640x427 photos at 224 the long
    side resizes to 383, (383 - 224) / 2 = 79.5, so HF crops at 79 and the official pipeline at 80."""
    proc = hf_processor(size)
    tf = build_eval_transform(EvalPreprocess.for_size(size))
    disagree = []
    for name, path in photo_paths().items():
        img = Image.open(path).convert("RGB")
        hf = proc(images=img, return_tensors="pt").pixel_values[0]
        ours = tf(img)
        short = int(size / 0.875)
        long_side = int(short * max(img.size) / min(img.size))
        if size < 384 and round((long_side - size) / 2) != (long_side - size) // 2:
            disagree.append(name)
            assert (hf - ours).abs().max() > 0.1  # a real difference, not noise
            floored = official(img, size, crop_offset=lambda n: n // 2)
            torch.testing.assert_close(hf, floored, rtol=0, atol=1e-5, msg=name)  # ... and exactly that one
        else:
            torch.testing.assert_close(hf, ours, rtol=0, atol=1e-5, msg=name)
    assert disagree == (["rocket.jpg", "china.jpg", "flower.jpg"] if size == 224 else [])


def test_eval_preprocess_settings():
    assert EvalPreprocess.for_size(224) == EvalPreprocess(224, 0.875)
    assert EvalPreprocess.for_size(384).crop_pct == 1.0
    pre = EvalPreprocess.from_hf_processor({"size": 224, "crop_pct": 0.875, "resample": 3})
    assert pre == EvalPreprocess(224, 0.875)
    pre = EvalPreprocess.from_hf_processor({"size": {"shortest_edge": 384}, "crop_pct": 0.875, "resample": 2})
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == (384, 1.0, "bilinear")
    with pytest.raises(ValueError, match="crop_pct"):
        EvalPreprocess(224, 1.5)
    tf = build_eval_transform(EvalPreprocess())
    assert pickle.loads(pickle.dumps(tf)) == tf  # DataLoader workers may need to pickle it


def test_denormalize_round_trip():
    img = Image.open(photo_paths()["chelsea.png"]).convert("RGB").resize((64, 64))
    x = build_eval_transform(EvalPreprocess(64, 1.0))(img)
    assert np.array_equal(np.asarray(denormalize(x)), np.asarray(img))


# ---------------------------------------------------------------------------- decoding
def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_exif_orientation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    p = _save(tmp_path, "rot.jpg", Image.fromarray(arr), exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (20, 40) and img.mode == "RGB"
    top, bottom = np.asarray(img)[2, 10], np.asarray(img)[-3, 10]
    assert top[0] > 200 and bottom[0] < 60  # red ends up on top after the rotation


def test_modes_grayscale_palette_alpha_16bit_cmyk(tmp_path):
    gray = load_image(_save(tmp_path, "g.png", Image.new("L", (4, 4), 77)))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    # palette with a transparent index -> white
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert load_image(_save(tmp_path, "p.png", pal, transparency=1)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_save(tmp_path, "p2.png", pal)).getpixel((0, 0)) == (10, 20, 30)
    # RGBA: transparent black -> white, opaque keeps its colour, half transparent blends
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 1] = (0, 0, 255, 255)
    rgba[0, 2] = (0, 0, 0, 128)
    img = load_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((2, 0)))
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert load_image(_save(tmp_path, "la.png", la)).getpixel((0, 0)) == (255, 255, 255)
    # 16-bit grayscale: scaled, not clipped (PIL's convert would turn 10000 into 255)
    g16 = Image.fromarray(np.array([[0, 10000, 65535]], np.uint16))
    assert g16.mode.startswith("I;16")
    img = load_image(_save(tmp_path, "g16.png", g16))
    assert [img.getpixel((i, 0))[0] for i in range(3)] == [0, 10000 >> 8, 255]
    # CMYK JPEG
    rgb = Image.new("RGB", (16, 16), (200, 40, 90))
    img = load_image(_save(tmp_path, "c.jpg", rgb.convert("CMYK"), quality=100))
    assert img.mode == "RGB" and all(abs(a - b) <= 6 for a, b in zip(img.getpixel((8, 8)), (200, 40, 90)))
    # float images and animated GIFs (first frame)
    assert to_rgb(Image.fromarray(np.array([[0.0, 1.0]], np.float32), "F")).getpixel((1, 0)) == (255, 255, 255)
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert load_image(p).getpixel((0, 0))[0] > 200


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_files_raise_one_line_naming_the_file(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, I am not an image\n", "not an image"),
        "trunc.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "bomb.png": (_png_header_only(100_000, 100_000), "too large"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: ") and reason in msg and "\n" not in msg, msg
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "fifo.png")  # must not block
    p = _save(tmp_path, "big.png", Image.new("RGB", (200, 100)))
    with pytest.raises(ImageError, match=r"too large \(200x100 = 20,000 pixels; the limit is 10,000\)"):
        load_image(p, max_pixels=10_000)
    assert load_image(p, max_pixels=None).size == (200, 100)
    # an extreme aspect ratio would make the resize step itself huge
    thin = Image.new("RGB", (1, 20_000))
    with pytest.raises(ImageError, match="extreme aspect ratio"):
        build_eval_transform(EvalPreprocess())(thin)


def test_to_pil_arrays_and_tensors():
    arr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(to_pil(arr)), arr)
    assert np.array_equal(np.asarray(to_pil(torch.from_numpy(arr).permute(2, 0, 1))), arr)
    assert to_pil(arr[..., 0]).getpixel((0, 0)) == (arr[0, 0, 0],) * 3
    assert to_pil(arr[..., :1]).size == (40, 30)
    rgba = np.concatenate([arr, np.zeros((30, 40, 1), np.uint8)], axis=-1)
    assert to_pil(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_pil(arr.astype(np.uint16) << 8).getpixel((3, 2)) == tuple(arr[2, 3])
    for bad in (arr.astype(np.float32), np.zeros((3, 4, 5, 6), np.uint8), np.zeros((4, 4, 2), np.uint8), "x", 3):
        with pytest.raises(ImageError):
            to_pil(bad)
    with pytest.raises(ImageError, match=r"must be in \[0, 1\]"):
        to_pil(torch.rand(3, 8, 8) * 2)  # floats are images in [0, 1] (torchvision's to_pil_image), nothing else

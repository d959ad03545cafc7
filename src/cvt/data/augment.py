"""Training augmentations, our own (no torchvision): the DeiT / official CvT recipe on PIL images, timm-like.

Per image (in DataLoader workers): :class:`RandomResizedCrop` (or a plain resize), a random shift, a
horizontal flip, :class:`RandAugment` (timm's ``rand-m9-mstd0.5-inc1``) or colour jitter, normalisation, then
:class:`RandomErasing` on the tensor. Per batch (in the training loop): :class:`MixupCutmix`.

*timm-like, not timm*: RandAugment's ops, RandomErasing and Mixup/CutMix follow timm's definitions (op lists
and order, magnitude ranges, box sampling, ``lam`` correction), RandomResizedCrop torchvision's sampling; but
every random number comes from a ``numpy.random.Generator`` in our own order, so no output is bit-equal to
timm's for a seed; crops keep PIL's sub-pixel box where torchvision rounds; colour jitter has no hue term.

Every random choice is drawn from the ``numpy.random.Generator`` passed in by the caller. The data set seeds
it from ``(seed, epoch, sample index)``, so an image gets the same augmentation whatever the number of
workers or processes, and a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..core.preprocess import RESAMPLE
from .transforms import to_tensor

Rng = np.random.Generator


def fill_color(mean: Sequence[float]) -> tuple[int, int, int]:
    """The dataset mean as an RGB fill for pixels that geometric ops uncover (timm's choice)."""
    return tuple(round(255 * m) for m in mean)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to ``size x size``.

    torchvision's sampling (10 tries, then a centre crop with the ratio clamped), except that the box keeps
    fractional coordinates: PIL resamples straight from the sub-pixel box, which matters for tiny inputs
    (an 8x8 digit) and changes nothing visible for photos.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"

    def box(self, width: int, height: int, rng: Rng) -> tuple[float, float, float, float]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if 0 < w <= width and 0 < h <= height:
                left = rng.uniform(0, width - w)
                top = rng.uniform(0, height - h)
                return left, top, left + w, top + h
        in_ratio = width / height  # fallback: the whole image, cropped to the nearest allowed ratio
        if in_ratio < self.ratio[0]:
            w, h = width, width / self.ratio[0]
        elif in_ratio > self.ratio[1]:
            w, h = height * self.ratio[1], height
        else:
            w, h = width, height
        left, top = (width - w) / 2, (height - h) / 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        return img.resize((self.size, self.size), RESAMPLE[self.interpolation], box=self.box(*img.size, rng))


def _affine(img: Image.Image, matrix: tuple[float, ...], fill: tuple[int, int, int], resample: int) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill)


def random_translate(img: Image.Image, max_fraction: float, rng: Rng, fill: tuple[int, int, int]) -> Image.Image:
    """Shift by a whole number of pixels, at most ``max_fraction`` of each side; uncovered pixels get ``fill``."""
    w, h = img.size
    dx = int(rng.integers(-int(max_fraction * w), int(max_fraction * w) + 1))
    dy = int(rng.integers(-int(max_fraction * h), int(max_fraction * h) + 1))
    if dx == 0 and dy == 0:
        return img
    # PIL's affine maps OUTPUT to INPUT coordinates: out(x, y) = in(x - dx, y - dy)
    return _affine(img, (1, 0, -dx, 0, 1, -dy), fill, Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------- colour
def color_jitter(img: Image.Image, strength: float, rng: Rng) -> Image.Image:
    """Brightness, contrast and saturation factors in ``[1 - s, 1 + s]``, applied in random order."""
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    for k in rng.permutation(len(ops)):
        img = ops[k](img).enhance(float(rng.uniform(max(0.0, 1 - strength), 1 + strength)))
    return img


# ---------------------------------------------------------------------------- RandAugment (timm's inc1 ops)
_MAX_LEVEL = 10.0


def _signed(v: float, rng: Rng) -> float:
    return -v if rng.random() < 0.5 else v


def _solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the top ``bits`` bits of each channel; 0 bits gives black (older Pillow did that, Pillow 13 refuses)."""
    if bits >= 8:
        return img
    mask = (0xFF << (8 - max(0, bits))) & 0xFF
    return img.point([v & mask for v in range(256)] * len(img.getbands()))


# name -> op(img, magnitude in [0, 10], rng, fill, resample). The "increasing" variants (timm's inc1 set) are
# stronger as the magnitude grows, for every op, which is what makes a single magnitude knob meaningful.
_OPS: dict[str, Callable[..., Image.Image]] = {
    "AutoContrast": lambda im, m, rng, fill, rs: ImageOps.autocontrast(im),
    "Equalize": lambda im, m, rng, fill, rs: ImageOps.equalize(im),
    "Invert": lambda im, m, rng, fill, rs: ImageOps.invert(im),
    "Rotate": lambda im, m, rng, fill, rs: im.rotate(_signed(30 * m / _MAX_LEVEL, rng), rs, fillcolor=fill),
    "PosterizeIncreasing": lambda im, m, rng, fill, rs: _posterize(im, 4 - int(4 * m / _MAX_LEVEL)),
    "SolarizeIncreasing": lambda im, m, rng, fill, rs: ImageOps.solarize(im, 256 - int(256 * m / _MAX_LEVEL)),
    "SolarizeAdd": lambda im, m, rng, fill, rs: _solarize_add(im, int(110 * m / _MAX_LEVEL)),
    "ColorIncreasing": lambda im, m, rng, fill, rs: ImageEnhance.Color(im).enhance(
        1 + _signed(0.9 * m / _MAX_LEVEL, rng)
    ),
    "ContrastIncreasing": lambda im, m, rng, fill, rs: ImageEnhance.Contrast(im).enhance(
        1 + _signed(0.9 * m / _MAX_LEVEL, rng)
    ),
    "BrightnessIncreasing": lambda im, m, rng, fill, rs: ImageEnhance.Brightness(im).enhance(
        1 + _signed(0.9 * m / _MAX_LEVEL, rng)
    ),
    "SharpnessIncreasing": lambda im, m, rng, fill, rs: ImageEnhance.Sharpness(im).enhance(
        1 + _signed(0.9 * m / _MAX_LEVEL, rng)
    ),
    "ShearX": lambda im, m, rng, fill, rs: _affine(im, (1, _signed(0.3 * m / _MAX_LEVEL, rng), 0, 0, 1, 0), fill, rs),
    "ShearY": lambda im, m, rng, fill, rs: _affine(im, (1, 0, 0, _signed(0.3 * m / _MAX_LEVEL, rng), 1, 0), fill, rs),
    "TranslateXRel": lambda im, m, rng, fill, rs: _affine(
        im, (1, 0, _signed(0.45 * m / _MAX_LEVEL, rng) * im.size[0], 0, 1, 0), fill, rs
    ),
    "TranslateYRel": lambda im, m, rng, fill, rs: _affine(
        im, (1, 0, 0, 0, 1, _signed(0.45 * m / _MAX_LEVEL, rng) * im.size[1]), fill, rs
    ),
}
_INCREASING = list(_OPS)  # timm's _RAND_INCREASING_TRANSFORMS, in its order
_SPEC_PART = re.compile(r"(mstd|m|p)(\d+(?:\.\d+)?)|(n|inc)(\d+)")


@dataclass(frozen=True)
class RandAugment:
    """timm's ``rand-m{M}-n{N}-mstd{S}-inc1-p{P}``: ``N`` ops drawn with replacement from timm's increasing set,
    each applied with probability ``P`` at magnitude ``M + N(0, S)`` clipped to ``[0, 10]`` (timm-like: see the
    module docstring)."""

    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.5
    prob: float = 0.5
    fill: tuple[int, int, int] = (124, 116, 104)
    interpolation: str = "bicubic"

    @classmethod
    def from_string(cls, spec: str, fill: tuple[int, int, int] = (124, 116, 104), interpolation: str = "bicubic"):
        """Parse timm's spelling, e.g. ``"rand-m9-mstd0.5-inc1"``; anything else raises ``ValueError``.

        Only timm's *increasing* op set (``inc1``, what the CvT recipe uses) is implemented, so ``inc0`` is
        refused rather than silently run as ``inc1`` (timm itself reads ``inc0`` as ``inc1``: it tests
        ``bool("0")``). Where timm differs: a spec without ``inc1`` runs the increasing set here (timm: its
        non-increasing set), and a missing ``m`` / ``mstd`` means 9 / 0.5, the CvT recipe's (timm: 10 / 0).
        """
        parts = spec.split("-")
        found = [_SPEC_PART.fullmatch(part) for part in parts[1:]]
        if parts[0] != "rand" or not all(found):
            raise ValueError(
                f"{spec!r} is not a RandAugment spec (rand-m<magnitude>[-n<ops>][-mstd<std>][-inc1][-p<prob>], "
                "e.g. rand-m9-mstd0.5-inc1)"
            )
        kw = {m[1] or m[3]: float(m[2] or m[4]) for m in found}
        if kw.get("inc", 1) != 1:
            raise ValueError(
                f"{spec!r}: inc{kw['inc']:g} is not supported, only timm's increasing ops (inc1; timm reads inc0 so)"
            )
        return cls(
            magnitude=kw.get("m", 9.0),
            num_ops=int(kw.get("n", 2)),
            magnitude_std=kw.get("mstd", 0.5),
            prob=kw.get("p", 0.5),
            fill=fill,
            interpolation=interpolation,
        )

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        resample = RESAMPLE[self.interpolation]
        for k in rng.integers(0, len(_INCREASING), self.num_ops):
            if rng.random() > self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = m + rng.normal(0.0, self.magnitude_std)
            m = float(min(_MAX_LEVEL, max(0.0, m)))
            img = _OPS[_INCREASING[k]](img, m, rng, self.fill, resample)
        return img


# ---------------------------------------------------------------------------- on tensors
@dataclass(frozen=True)
class RandomErasing:
    """timm's RandomErasing, ``mode="pixel"``, one box: with probability ``prob`` replace a box covering
    2%-33% of the image (aspect 0.3-3.3) by per-pixel N(0, 1) noise (the data are normalised already)."""

    prob: float = 0.25
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        """``x: (C, H, W)`` normalised image -> the same, possibly with an erased box (in place)."""
        if rng.random() >= self.prob:
            return x
        c, h, w = x.shape
        log_aspect = (math.log(self.min_aspect), math.log(1 / self.min_aspect))
        for _ in range(10):
            target = h * w * rng.uniform(self.min_area, self.max_area)
            aspect = math.exp(rng.uniform(*log_aspect))
            eh = round(math.sqrt(target * aspect))
            ew = round(math.sqrt(target / aspect))
            if 0 < eh < h and 0 < ew < w:
                top = int(rng.integers(0, h - eh + 1))
                left = int(rng.integers(0, w - ew + 1))
                noise = rng.standard_normal((c, eh, ew), dtype=np.float32)
                x[:, top : top + eh, left : left + ew] = torch.from_numpy(noise)
                break
        return x


class TrainTransform:
    """PIL image + generator -> ``(3, size, size)`` normalised float32 tensor, augmented as configured."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        random_resized_crop: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        translate: float = 0.0,
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        randaugment: str | None = None,
        random_erasing: float = 0.0,
        interpolation: str = "bicubic",
    ):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.fill = fill_color(mean)
        self.crop = RandomResizedCrop(size, scale, ratio, interpolation) if random_resized_crop else None
        self.interpolation = interpolation
        self.translate, self.hflip, self.jitter = translate, hflip, color_jitter
        self.randaug = RandAugment.from_string(randaugment, self.fill, interpolation) if randaugment else None
        self.erase = RandomErasing(random_erasing) if random_erasing > 0 else None

    def __call__(self, img: Image.Image, rng: Rng) -> torch.Tensor:
        img = img.convert("RGB")
        if self.crop is not None:
            img = self.crop(img, rng)
        else:
            img = img.resize((self.size, self.size), RESAMPLE[self.interpolation])
        if self.translate > 0:
            img = random_translate(img, self.translate, rng, self.fill)
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaug is not None:
            img = self.randaug(img, rng)
        elif self.jitter > 0:  # timm applies colour jitter only without RandAugment
            img = color_jitter(img, self.jitter, rng)
        x = to_tensor(img, self.mean, self.std)
        if self.erase is not None:
            x = self.erase(x, rng)
        return x


# ---------------------------------------------------------------------------- per batch
def soft_targets(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(B,)`` class indices -> ``(B, num_classes)`` label-smoothed one-hot (timm's on/off values)."""
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


@dataclass(frozen=True)
class MixupCutmix:
    """timm's Mixup in ``batch`` mode: one ``lam`` per batch; image ``i`` is mixed with image ``B-1-i``.

    ``__call__(x, y, rng)``: ``x (B, C, H, W)``, ``y (B,)`` -> mixed ``x`` and soft targets ``(B, K)``.
    With cutmix the box is clipped to the image and ``lam`` corrected to the pasted area.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def sample(self, rng: Rng) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch."""
        use_cutmix = False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        elif self.mixup_alpha > 0:
            alpha = self.mixup_alpha
        else:
            use_cutmix, alpha = True, self.cutmix_alpha
        lam = float(rng.beta(alpha, alpha))
        if rng.random() >= self.prob:
            lam = 1.0
        return lam, use_cutmix

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: Rng) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix = self.sample(rng)
        if lam < 1.0:
            if use_cutmix:
                h, w = x.shape[-2:]
                cut = math.sqrt(1.0 - lam)
                ch, cw = int(h * cut), int(w * cut)
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
                y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
                x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
                x = x.clone()
                x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        t = soft_targets(y, self.num_classes, self.label_smoothing)
        return x, t * lam + t.flip(0) * (1.0 - lam)

"""Torch glue over the core's evaluation preprocessing (:mod:`cvt.core.preprocess`): PIL -> tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..core.images import DEFAULT_MAX_PIXELS
from ..core.preprocess import EvalTransform as _ArrayTransform
from ..core.preprocess import denormalize as _denormalize_array
from ..core.preprocess import normalize
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess


def to_tensor(
    img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB PIL image -> normalised ``(3, H, W)`` float32 tensor (``/255``, then ``(x - mean) / std``)."""
    return torch.from_numpy(normalize(img, mean, std))


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Image.Image:
    """Inverse of :func:`to_tensor`: ``(3, H, W)`` normalised tensor -> RGB PIL image (for display)."""
    return _denormalize_array(x.detach().float().cpu().numpy(), mean, std)


@dataclass(frozen=True)
class EvalTransform:
    """Picklable (DataLoader workers) ``image -> (3, img_size, img_size)`` float32 tensor, the official way."""

    pre: EvalPreprocess
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(_ArrayTransform(self.pre, self.max_pixels)(img))


def build_eval_transform(pre: EvalPreprocess) -> EvalTransform:
    """PIL image (any mode) -> ``(3, img_size, img_size)`` tensor, exactly as the official evaluation."""
    return EvalTransform(pre)

"""The Flax CvT as a linen module, for code written against linen (vit-flax's calling convention).

>>> model = cvt.flax.linen.to_linen("cvt-13")
>>> variables = model.init({"params": key, "dropout": key2}, images)        # {"params", "batch_stats"}
>>> logits, updates = model.apply(variables, images, mutable=["batch_stats"], rngs={"dropout": key3})
>>> logits = model.apply(variables, images, train=False)                   # eval: running statistics

Built with ``flax.nnx.bridge.to_linen`` around the NNX :class:`~cvt.flax.model.CvT` (under the name
``model``), so numerics and parameter layout are the NNX model's. ``train`` (default ``True``, as vit-flax,
whose BatchNorm is always in training mode) picks BatchNorm's statistics and switches dropout / drop path.
:func:`linen_variables` turns a loaded NNX model (released weights) into ``variables`` for ``apply``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen, nnx
from flax.nnx import bridge

from ..core.config import CvTConfig
from ..core.presets import get_config
from .model import CvT

Array = jax.Array


class TrainEvalCvT(nnx.Module):
    """A :class:`CvT` whose mode is a call argument (linen style) instead of ``model.train()`` / ``.eval()``."""

    def __init__(self, config: CvTConfig, *, rngs: nnx.Rngs):
        self.model = CvT(config, rngs=rngs)

    def __call__(self, x: Array, train: bool = True) -> Array:
        """``(B, H, W, C)`` -> logits ``(B, num_classes)``."""
        if train:
            self.model.train()
        else:
            self.model.eval()
        return self.model(x)


def to_linen(name_or_config: str | CvTConfig) -> linen.Module:
    """A linen module of the architecture: ``init(rngs, x)`` / ``apply(variables, x, train=..., ...)``."""
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return bridge.to_linen(TrainEvalCvT, config)


def linen_variables(model: CvT) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` for :func:`to_linen`'s ``apply`` from an NNX model's arrays."""
    return {
        "params": {"model": nnx.state(model, nnx.Param).to_pure_dict()},
        "batch_stats": {"model": nnx.state(model, nnx.BatchStat).to_pure_dict()},
    }

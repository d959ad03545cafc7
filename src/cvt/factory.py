"""``create_model``: one entry point from a name, a config or a weight file to a ready :class:`~cvt.model.CvT`.

The resolution rule (which architecture, which preprocessing and labels, for a name and a weight source) is the
framework-free :func:`cvt.core.weights.resolve`, shared with every front-end and every ``cvt`` verb.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .core.config import CvTConfig
from .core.spec import PretrainedSpec
from .core.weights import resolve as core_resolve
from .model import CvT
from .weights.io import LoadedWeights, load_pickle, load_state_dict

log = logging.getLogger(__name__)


def resolve(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
) -> tuple[CvTConfig, PretrainedSpec, LoadedWeights | None]:
    """``(architecture, spec, loaded torch weights or None)``: :func:`cvt.core.weights.resolve` with torch tensors."""
    return core_resolve(name, weights=weights, pretrained=pretrained, framework="pt", read_pickle=load_pickle)


def create_model(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    activation: str | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> CvT:
    """Build a CvT.

    Args:
        name: an architecture or checkpoint name (``cvt.list_models()``), a :class:`CvTConfig`, or ``None``
            to take the architecture from ``weights`` (see the module docstring).
        weights: a local weight file or directory in any supported layout (official ``.pth``, HF directory /
            ``.safetensors`` / ``.bin``, cvt ``.safetensors``); the layout is detected from the keys.
        pretrained: download the released checkpoint ``name`` from the Hugging Face hub (cached).
        num_classes: the head size. ``None`` keeps the file's; a different number puts a fresh head on the
            loaded backbone (fine-tuning); ``0`` removes the head.
        activation: ``"quick_gelu"`` (official, default for named models) or ``"gelu"`` (HF numerics).
        strict: raise on missing, unexpected or mis-shaped keys (a readable report either way).
        device: where to put the model.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).

    Returns:
        The model (``model.pretrained_cfg``: its spec; ``model.load_report``: what loading found), in eval
        mode if weights were loaded, else in train mode (as ``nn.Module`` builds it).
    """
    config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained)
    changes: dict[str, Any] = dict(overrides)
    if activation is not None:
        changes["activation"] = activation
    if loaded is not None:
        file_classes = loaded.state_dict["head.weight"].shape[0] if "head.weight" in loaded.state_dict else 0
        changes.setdefault("num_classes", file_classes if num_classes is None else num_classes)
    elif num_classes is not None:
        changes["num_classes"] = num_classes
    if changes:
        config = config.replace(**changes)
    if isinstance(spec.labels, tuple) and len(spec.labels) != config.num_classes:
        spec = spec.replace(labels=None)  # a new head: the file's names no longer apply

    model = CvT(config)
    model.pretrained_cfg = spec
    if loaded is not None:
        model.load_report = load_state_dict(model, loaded.state_dict, strict=strict, source=str(loaded.path))
        log.info("loaded %s (%s layout): %s", loaded.path, loaded.source_format, model.load_report)
        model.eval()
    if device is not None:
        model.to(device)
    return model


__all__ = ["create_model", "resolve"]

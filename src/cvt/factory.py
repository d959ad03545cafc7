"""``create_model``: one entry point from a name, a config or a weight file to a ready :class:`~cvt.model.CvT`."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .config import CvTConfig
from .model import CvT
from .registry import get_checkpoint, get_config
from .weights.io import WeightsError, infer_config, load_state_dict, read_weights

log = logging.getLogger(__name__)


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
            to take the architecture from ``weights`` (a cvt-torch file or an HF directory describe
            themselves; an official ``.pth`` is recognised by its shapes).
        weights: a local weight file or directory in any supported layout (official ``.pth``, HF directory /
            ``.safetensors`` / ``.bin``, cvt-torch ``.safetensors``); the layout is detected from the keys.
        pretrained: download the released checkpoint ``name`` from the Hugging Face hub (cached).
        num_classes: the head size. ``None`` keeps the file's; a different number puts a fresh head on the
            loaded backbone (fine-tuning); ``0`` removes the head.
        activation: ``"quick_gelu"`` (official, default for named models) or ``"gelu"`` (HF numerics).
        strict: raise on missing, unexpected or mis-shaped keys (a readable report either way).
        device: where to put the model.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).

    Returns:
        The model in eval mode if weights were loaded, else in train mode (as ``nn.Module`` builds it).
    """
    if isinstance(name, CvTConfig):
        config: CvTConfig | None = name
    elif name is not None:
        config = get_config(name)
    else:
        config = None
    if pretrained:
        if weights is not None:
            raise ValueError("give either pretrained=True or weights=..., not both")
        ckpt = get_checkpoint(name) if isinstance(name, str) else None
        if ckpt is None:
            raise ValueError(f"pretrained=True needs a released checkpoint name, got {name!r}")
        from .weights.hub import download_checkpoint

        weights = download_checkpoint(ckpt)

    loaded = read_weights(weights) if weights is not None else None
    if config is None:
        if loaded is None:
            raise ValueError("create_model needs a model name, a CvTConfig or weights=")
        config = loaded.config or infer_config(loaded.state_dict)

    changes: dict[str, Any] = dict(overrides)
    if activation is not None:
        changes["activation"] = activation
    if loaded is not None:
        file_classes = loaded.state_dict["head.weight"].shape[0] if "head.weight" in loaded.state_dict else 0
        changes.setdefault("num_classes", file_classes if num_classes is None else num_classes)
        if loaded.labels and changes["num_classes"] == len(loaded.labels):
            changes["extra"] = {**config.extra, "labels": loaded.labels}
    elif num_classes is not None:
        changes["num_classes"] = num_classes
    if changes:
        config = config.replace(**changes)

    model = CvT(config)
    if loaded is not None:
        report = load_state_dict(model, loaded.state_dict, strict=strict, source=str(loaded.path))
        log.info("loaded %s (%s layout): %s", loaded.path, loaded.source_format, report)
        model.load_report = report  # type: ignore[attr-defined]
        model.eval()
    if device is not None:
        model.to(device)
    return model


__all__ = ["WeightsError", "create_model"]

"""``create_model``: one entry point from a name, a config or a weight file to a ready :class:`~cvt.torch.model.CvT`
(or to timm's ``features_only`` backbone, :class:`CvTFeatures`).

The resolution rule (which architecture, which preprocessing and labels, for a name and a weight source) is the
framework-free :func:`cvt.core.weights.resolve`, shared with every front-end and every ``cvt`` verb.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.spec import PretrainedSpec
from ..core.weights import resolve as core_resolve
from ..core.weights import with_overrides
from .model import CvT
from .weights import LoadedWeights, as_torch, load_state_dict

log = logging.getLogger(__name__)


def resolve(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    strict: bool = True,
) -> tuple[CvTConfig, PretrainedSpec, LoadedWeights | None]:
    """``(architecture, spec, loaded torch weights or None)``: :func:`cvt.core.weights.resolve` with torch tensors."""
    config, spec, loaded = core_resolve(name, weights=weights, pretrained=pretrained, framework="pt", strict=strict)
    return config, spec, as_torch(loaded) if loaded is not None else None


@overload
def create_model(
    name: str | CvTConfig | None = None, *, features_only: Literal[False] = False, **kwargs: Any
) -> CvT: ...
@overload
def create_model(
    name: str | CvTConfig | None = None, *, features_only: Literal[True], **kwargs: Any
) -> CvTFeatures: ...
def create_model(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    activation: str | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] = (0, 1, 2),
    **overrides: Any,
) -> CvT | CvTFeatures:
    """Build a CvT (or, with ``features_only``, a backbone returning per-stage maps).

    Args:
        name: an architecture or checkpoint name (``cvt.list_models()``), a :class:`CvTConfig`, or ``None``
            to take the architecture from ``weights`` (see the module docstring).
        weights: a local weight file or directory in any supported layout (official ``.pth``, HF directory /
            ``.safetensors`` / ``.bin``, cvt ``.safetensors``); the layout is detected from the keys.
        pretrained: download the released checkpoint ``name`` from the Hugging Face hub (cached).
        num_classes: the head size. ``None`` keeps the file's; a different number puts a fresh head on the
            loaded backbone (fine-tuning); ``0`` removes the head.
        activation: ``"quick_gelu"`` or ``"gelu"``; default (:mod:`cvt.core.weights`): a native file's record,
            else ``quick_gelu`` for a released checkpoint name, else ``gelu`` for an HF directory, else
            ``quick_gelu`` (official ``.pth``, an architecture name alone).
        strict: refuse weights that do not fit the architecture, in one line naming both (off: load what fits,
            ``model.load_report`` says what did not).
        device: where to put the model.
        features_only: return timm's ``features_only`` model instead: a :class:`~cvt.torch.model.CvTFeatures`
            whose ``forward(x)`` gives the ``(B, C_i, H_i, W_i)`` maps of ``out_indices`` and whose
            ``feature_info`` has ``channels()`` / ``reduction()``; later stages and the head are removed.
        out_indices: the stages a ``features_only`` model returns (an int ``n``: the last ``n``).
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).

    Returns:
        The model (``model.pretrained_cfg``: its spec; ``model.load_report``: what loading found), in eval
        mode if weights were loaded, else in train mode (as ``nn.Module`` builds it).
    """
    config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained, strict=strict)
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **overrides)

    model = CvT(config)
    model.pretrained_cfg = spec
    if loaded is not None:
        model.load_report = load_state_dict(model, loaded.state_dict, strict=strict, source=str(loaded.path))
        log.info("loaded %s (%s layout): %s", loaded.path, loaded.source_format, model.load_report)
        model.eval()
    if device is not None:
        model.to(device)
    return CvTFeatures(model, out_indices) if features_only else model


class FeatureInfo:
    """timm's ``FeatureInfo`` API over a model's ``feature_info`` dicts and the returned stages.

    ``channels()``, ``reduction()``, ``module_name()`` list the returned stages' values (or stage ``idx``'s);
    ``info[i]`` / ``len(info)`` index every stage of the (pruned) model, as in timm.
    """

    def __init__(self, info: list[dict[str, Any]], out_indices: Sequence[int]):
        self.info = info
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self) -> list[dict[str, Any]]:
        return [self.info[i] for i in self.out_indices]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class CvTFeatures(nn.Module):
    """timm's ``features_only`` model: ``forward(x)`` -> the ``(B, C_i, H_i, W_i)`` maps of ``out_indices``.

    Wraps ``model`` after pruning it (later stages, final norm and head removed); ``feature_info`` describes
    the returned maps. State-dict keys gain a ``model.`` prefix.
    """

    def __init__(self, model: CvT, out_indices: int | Sequence[int] = (0, 1, 2)):
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=True, prune_head=True)
        self.model = model
        self.pretrained_cfg = model.pretrained_cfg
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


__all__ = ["CvTFeatures", "FeatureInfo", "create_model", "resolve"]

"""``create_model``: one entry point from a name, a config or a weight file to a ready :class:`~cvt.torch.model.CvT`
(or to timm's ``features_only`` backbone, :class:`CvTFeatures`).

The resolution rule (which architecture, which preprocessing and labels, for a name and a weight source) is the
framework-free :func:`cvt.core.weights.resolve`, shared with every front-end and every ``cvt`` verb.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import torch
from torch import nn

from ..core.config import CvTConfig, StageConfig
from ..core.errors import UsageError
from ..core.spec import PretrainedSpec
from ..core.weights import resolve as core_resolve
from ..core.weights import with_overrides
from .model import CvT, check_global_pool
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
    drop_rate: float | None = None,
    drop_path_rate: float | Sequence[float] | None = None,
    global_pool: str | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
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
        drop_rate: timm's classifier dropout, on the pooled features before the head (``head_drop_rate``).
        drop_path_rate: stochastic depth, as the official recipes' ``DROP_PATH_RATE``: a float is the last stage's
            rate (earlier stages 0, as ``[0, 0, x]``), a sequence gives each stage's; each stage ramps from 0 to
            its rate over its blocks. ``None`` keeps the architecture's (0.1 in the last stage of cvt-13/21).
        global_pool: timm's pooling argument: ``None`` or the model's own (``"token"`` with a cls token, else
            ``"avg"``); others raise :class:`UsageError`.
        pretrained_cfg_overlay: timm's ``pretrained_cfg`` keys to change in the spec
            (:meth:`PretrainedSpec.with_timm`: ``input_size``, ``crop_pct``, ``mean``, ...), and ``file``: a local
            weight file to load instead of the download (as timm's ``pretrained_cfg_overlay=dict(file=...)``);
            ``num_classes`` (the file's class count in timm) is ignored: the file's head says it.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``in_chans``, ``init``, ...); any
            other keyword raises :class:`UsageError` in one line listing the accepted ones.

    Returns:
        The model (``model.pretrained_cfg``: its spec; ``model.load_report``: what loading found), in eval
        mode if weights were loaded, else in train mode (as ``nn.Module`` builds it).
    """
    check_overrides(overrides)
    overlay = dict(pretrained_cfg_overlay or {})
    check_overlay(overlay)
    if overlay.get("file") is not None:  # timm's way to give local weights for pretrained=True
        if weights is not None:
            raise UsageError("pretrained_cfg_overlay: give weights either as weights= or as its 'file', not both")
        weights, pretrained = overlay["file"], False
    overlay.pop("file", None)
    overlay.pop("num_classes", None)  # timm: the weights' class count; cvt reads it from the file's head
    if drop_rate is not None:
        overrides["head_drop_rate"] = head_drop_rate(drop_rate, overrides)
    config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained, strict=strict)
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **overrides)
    if drop_path_rate is not None:
        config = config.replace(stages=with_drop_path(config.stages, drop_path_rate))
    check_global_pool(config, global_pool)
    if overlay:
        spec = spec.with_timm(overlay).for_head(config.num_classes)

    model = CvT(config)
    model.pretrained_cfg = spec
    if loaded is not None:
        model.load_report = load_state_dict(model, loaded.state_dict, strict=strict, source=str(loaded.path))
        log.info("loaded %s (%s layout): %s", loaded.path, loaded.source_format, model.load_report)
        model.eval()
    if device is not None:
        model.to(device)
    return CvTFeatures(model, out_indices) if features_only else model


# create_model's own keywords (besides the CvTConfig fields), named in the one-line error for any other
KEYWORDS = (
    "weights",
    "pretrained",
    "num_classes",
    "activation",
    "strict",
    "device",
    "features_only",
    "out_indices",
    "drop_rate",
    "drop_path_rate",
    "global_pool",
    "pretrained_cfg_overlay",
)


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse (one :class:`UsageError` line listing the accepted ones) a keyword that is neither one of
    :func:`create_model`'s nor a top-level :class:`CvTConfig` field."""
    fields = {f.name for f in dataclasses.fields(CvTConfig)} - {"num_classes", "activation"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        accepted = ", ".join([*KEYWORDS, *sorted(fields)])
        plural = "s" if len(unknown) > 1 else ""
        raise UsageError(f"create_model: unknown keyword argument{plural} {', '.join(unknown)} (accepted: {accepted})")


# pretrained_cfg_overlay keys about the weights, not the spec: timm's local file, and the file's class count (timm's
# train.py --pretrained-path passes -1 to adapt the head; cvt reads the count from the file and adapts on its own)
OVERLAY_KEYS = ("file", "num_classes")


def check_overlay(overlay: Mapping[str, Any]) -> None:
    """Refuse (one :class:`UsageError` line) a ``pretrained_cfg_overlay`` key cvt cannot apply."""
    unknown = sorted(set(overlay) - {*PretrainedSpec.TIMM_KEYS, *OVERLAY_KEYS})
    if unknown:
        accepted = ", ".join([*PretrainedSpec.TIMM_KEYS, *OVERLAY_KEYS])
        raise UsageError(
            f"pretrained_cfg_overlay: {unknown[0]!r} cannot be applied to a cvt model (accepted: {accepted})"
        )


def head_drop_rate(drop_rate: float, overrides: Mapping[str, Any]) -> float:
    """timm's ``drop_rate`` as :attr:`CvTConfig.head_drop_rate` (checked here, so the error names ``drop_rate``)."""
    if "head_drop_rate" in overrides:
        raise UsageError("drop_rate: it is head_drop_rate in timm's spelling; give one of them")
    if not 0.0 <= drop_rate < 1.0:
        raise UsageError(f"drop_rate: must be in [0, 1), got {drop_rate}")
    return float(drop_rate)


def with_drop_path(stages: Sequence[StageConfig], rate: float | Sequence[float]) -> tuple[StageConfig, ...]:
    """``stages`` with the official per-stage drop-path rates: a float is the last stage's (``[0, 0, x]``), a
    sequence one rate per stage. Out-of-range rates are refused by the config's validation."""
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        rates = [0.0] * (len(stages) - 1) + [float(rate)]
    elif isinstance(rate, Sequence) and not isinstance(rate, str) and len(rate) == len(stages):
        rates = [float(r) for r in rate]
    else:
        raise UsageError(
            f"drop_path_rate: expected a float (the last stage's rate) or {len(stages)} per-stage rates, got {rate!r}"
        )
    return tuple(dataclasses.replace(s, drop_path_rate=r) for s, r in zip(stages, rates))


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
        self.default_cfg = model.pretrained_cfg  # timm's older name
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


__all__ = ["CvTFeatures", "FeatureInfo", "check_overrides", "create_model", "resolve", "with_drop_path"]

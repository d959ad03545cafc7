"""Foreign spellings of a :class:`~cvt.core.config.CvTConfig`: read and written here, nowhere else.

* the official yaml ``MODEL.SPEC`` dict (upper-case keys, one list per field; also what the TensorFlow port's
  ``spec=`` takes): :func:`from_official_spec` / :func:`to_official_spec`;
* the HF transformers ``config.json`` of ``CvtForImageClassification``: :func:`from_hf_config` /
  :func:`to_hf_config`.

Both spell every :class:`~cvt.core.config.StageConfig` field as one list with a value per stage; the table
:data:`STAGE_FIELDS` names each field in both. ``CvTConfig.from_official_spec`` and the other classmethods of the
same names are thin delegates to these functions (the public API).

Framework-free: imports nothing but the core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import bounds
from .config import CvTConfig, StageConfig, reject_unknown
from .errors import ConfigError, shorten
from .labels import HF_PLACEHOLDER, LabelSet, placeholders

# StageConfig field -> (official SPEC key, HF CvtConfig field, HF's default when a config.json omits the field)
STAGE_FIELDS: dict[str, tuple[str, str, tuple[Any, ...]]] = {
    "patch_size": ("PATCH_SIZE", "patch_sizes", (7, 3, 3)),
    "patch_stride": ("PATCH_STRIDE", "patch_stride", (4, 2, 2)),
    "patch_padding": ("PATCH_PADDING", "patch_padding", (2, 1, 1)),
    "embed_dim": ("DIM_EMBED", "embed_dim", (64, 192, 384)),
    "num_heads": ("NUM_HEADS", "num_heads", (1, 3, 6)),
    "depth": ("DEPTH", "depth", (1, 2, 10)),
    "mlp_ratio": ("MLP_RATIO", "mlp_ratio", (4.0,) * 3),
    "attn_drop_rate": ("ATTN_DROP_RATE", "attention_drop_rate", (0.0,) * 3),
    "drop_rate": ("DROP_RATE", "drop_rate", (0.0,) * 3),
    "drop_path_rate": ("DROP_PATH_RATE", "drop_path_rate", (0.0, 0.0, 0.1)),
    "qkv_bias": ("QKV_BIAS", "qkv_bias", (True,) * 3),
    "cls_token": ("CLS_TOKEN", "cls_token", (False, False, True)),
    "qkv_proj_method": ("QKV_PROJ_METHOD", "qkv_projection_method", ("dw_bn",) * 3),
    "kernel_qkv": ("KERNEL_QKV", "kernel_qkv", (3,) * 3),
    "padding_kv": ("PADDING_KV", "padding_kv", (1,) * 3),
    "stride_kv": ("STRIDE_KV", "stride_kv", (2,) * 3),
    "padding_q": ("PADDING_Q", "padding_q", (1,) * 3),
    "stride_q": ("STRIDE_Q", "stride_q", (1,) * 3),
}
_OFFICIAL_KEYS = {official: attr for attr, (official, _, _) in STAGE_FIELDS.items()}
_HF_KEYS = {hf: attr for attr, (_, hf, _) in STAGE_FIELDS.items()}


# ---------------------------------------------------------------------------- official / TF-port SPEC
def from_official_spec(spec: Mapping[str, Any], **overrides: Any) -> CvTConfig:
    """Build from the official yaml ``MODEL.SPEC`` dict (``NUM_STAGES``, ``DIM_EMBED``, ``DEPTH``, ...).

    Keys may be lower-case (the TF port passes the same dict). Unknown keys are rejected; lists must have
    ``NUM_STAGES`` entries; ``POS_EMBED`` must be all false (no released model uses one and this library has
    none). ``overrides``: other :class:`CvTConfig` fields (``name``, ``num_classes`` ...).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"SPEC: expected a mapping of fields, got {type(spec).__name__} {shorten(spec)}")
    spec = {str(k).upper(): v for k, v in spec.items()}
    reject_unknown(spec, set(_OFFICIAL_KEYS) | {"NUM_STAGES", "INIT", "POS_EMBED"}, "SPEC.")
    n = spec.get("NUM_STAGES", len(spec.get("DEPTH", ())))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"SPEC.NUM_STAGES: must be a positive integer, got {shorten(n)}")
    bounds.check(n, bounds.STAGES, "SPEC.NUM_STAGES")  # before any per-stage list is made
    if any(_as_list(spec.get("POS_EMBED", [False] * n), "SPEC.POS_EMBED", n)):
        raise ConfigError("SPEC.POS_EMBED: positional embeddings are not supported (no released CvT uses them)")
    per_stage: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, attr in _OFFICIAL_KEYS.items():
        if key not in spec:
            continue
        for i, v in enumerate(_as_list(spec[key], f"SPEC.{key}", n)):
            per_stage[i][attr] = v
    for i, s in enumerate(per_stage):
        for req in ("embed_dim", "depth", "num_heads"):
            if req not in s:
                raise ConfigError(f"SPEC: missing {STAGE_FIELDS[req][0]} (needed for stage {i})")
    kwargs: dict[str, Any] = {"init": spec.get("INIT", "trunc_norm")}
    kwargs.update(overrides)
    return CvTConfig(stages=tuple(StageConfig(**s) for s in per_stage), **kwargs)


def to_official_spec(config: CvTConfig) -> dict[str, Any]:
    """The official ``MODEL.SPEC`` dict of ``config`` (:func:`from_official_spec` reads it back)."""
    spec: dict[str, Any] = {"INIT": config.init, "NUM_STAGES": len(config.stages)}
    for key, attr in _OFFICIAL_KEYS.items():
        spec[key] = [getattr(s, attr) for s in config.stages]
    spec["POS_EMBED"] = [False] * len(config.stages)
    return spec


# ---------------------------------------------------------------------------- HF transformers config.json
def from_hf_config(hf: Mapping[str, Any], **overrides: Any) -> CvTConfig:
    """Build from an HF ``CvtConfig`` dict (``config.json``); activation defaults to HF's exact GELU.

    The class names (``id2label``) are not architecture: :func:`cvt.core.config.hf_labels` reads them.
    """
    if not isinstance(hf, Mapping):
        raise ConfigError(f"config: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "cvt") != "cvt":
        raise ConfigError(f"model_type: expected 'cvt', got {shorten(hf.get('model_type'))}")
    depth = hf.get("depth", STAGE_FIELDS["depth"][2])
    n = len(depth) if isinstance(depth, Sequence) and not isinstance(depth, (str, bytes)) else 0
    if n < 1:
        raise ConfigError(f"depth: expected a list, got {shorten(depth)}")
    bounds.check(n, bounds.STAGES, "depth: number of stages")
    per_stage: list[dict[str, Any]] = [{} for _ in range(n)]
    for attr, (_, key, hf_default) in STAGE_FIELDS.items():
        for i, v in enumerate(_as_list(hf.get(key, hf_default), key, n)):
            per_stage[i][attr] = v
    # the JSON types are CvTConfig's to check (a string "3" is refused there, not converted here)
    kwargs: dict[str, Any] = {"activation": "gelu", "in_chans": hf.get("num_channels", 3)}
    id2label = hf.get("id2label")
    if id2label and not isinstance(id2label, Mapping):
        raise ConfigError(f"id2label: expected a mapping of class index to name, got {type(id2label).__name__}")
    if id2label:
        kwargs["num_classes"] = len(id2label)
    elif "num_labels" in hf:
        kwargs["num_classes"] = hf["num_labels"]
    kwargs.update(overrides)
    return CvTConfig(stages=tuple(StageConfig(**s) for s in per_stage), **kwargs)


def to_hf_config(config: CvTConfig, labels: LabelSet | Sequence[str] | str | None = None) -> dict[str, Any]:
    """An HF ``config.json`` dict that ``transformers.CvtForImageClassification.from_pretrained`` accepts.

    ``labels``: the model's class names (``PretrainedSpec.labels``), a list of names, or a named set
    (``"imagenet-1k"``: written out as its 1000 names). ``id2label`` gets them when they fit the head, and HF's
    ``LABEL_<i>`` placeholders only when the model has none (or names of another length). ``label2id`` is their
    inverse; a name two classes share (ImageNet's two "crane"s) maps to the later one, as on the hub.

    Note HF always runs exact GELU: a ``quick_gelu`` model saved this way gives slightly different
    logits in transformers (the released checkpoints on the hub have the same caveat).
    """
    label_set = LabelSet.parse(labels)  # a named set is expanded to its names here, nowhere else
    fitting = label_set.for_head(config.num_classes) if label_set is not None else None
    names = list(fitting) if fitting is not None else placeholders(config.num_classes, HF_PLACEHOLDER)
    d: dict[str, Any] = {
        "architectures": ["CvtForImageClassification"],
        "model_type": "cvt",
        "num_channels": config.in_chans,
    }
    for key, attr in _HF_KEYS.items():
        d[key] = [getattr(s, attr) for s in config.stages]
    d["initializer_range"] = 0.02
    d["layer_norm_eps"] = 1e-12  # unused by HF's model (its LayerNorms keep eps=1e-5), kept for fidelity
    d["id2label"] = {str(i): name for i, name in enumerate(names)}
    d["label2id"] = {name: i for i, name in enumerate(names)}
    return d


def _as_list(value: Any, name: str, n: int) -> list[Any]:
    """A per-stage list of ``n`` values, or a :class:`ConfigError` naming the field."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ConfigError(f"{name}: expected a list of {n} per-stage values, got {shorten(value)}")
    if len(value) != n:
        raise ConfigError(f"{name}: expected {n} per-stage values, got {len(value)} ({shorten(list(value))})")
    return list(value)

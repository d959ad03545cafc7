"""Typed, validated architecture configuration for CvT.

A model is a tuple of :class:`StageConfig` (one per stage) plus a few global fields in :class:`CvTConfig`.
Both are frozen dataclasses: build variants with :func:`dataclasses.replace` or :meth:`CvTConfig.replace`.

Two foreign spellings are understood:

* the official yaml ``MODEL.SPEC`` dict (upper-case keys, one list per field; also what the TensorFlow
  port's ``spec=`` takes): :meth:`CvTConfig.from_official_spec` / :meth:`CvTConfig.to_official_spec`;
* the HF transformers ``config.json`` of ``CvtForImageClassification``: :meth:`CvTConfig.from_hf_config` /
  :meth:`CvTConfig.to_hf_config`.

Geometry is written here once (:func:`conv_out`, :meth:`StageConfig.kv_shape`, :meth:`CvTConfig.feature_shapes`)
and read by the models of every framework, the MAC counter and the attention maps.

Framework-free: imports nothing but :mod:`.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

ACTIVATIONS = ("quick_gelu", "gelu")
PROJ_METHODS = ("dw_bn", "avg", "linear")
INITS = ("trunc_norm", "xavier")


@dataclass(frozen=True)
class StageConfig:
    """One CvT stage: a convolutional token embedding followed by ``depth`` transformer blocks.

    Defaults are the official values for stages 2 and 3 (3x3 embedding, stride 2).
    """

    embed_dim: int  # C_i, the token width of this stage
    depth: int  # number of blocks
    num_heads: int  # must divide embed_dim
    patch_size: int = 3  # kernel of the embedding convolution
    patch_stride: int = 2
    patch_padding: int = 1
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    cls_token: bool = False  # official models put it in the last stage only
    qkv_proj_method: str = "dw_bn"  # dw_bn | avg | linear
    kernel_qkv: int = 3
    padding_q: int = 1
    stride_q: int = 1
    padding_kv: int = 1
    stride_kv: int = 2  # the key/value map is 1/stride_kv^2 the size of the query map
    drop_rate: float = 0.0  # dropout after the embedding, after attn.proj and in the MLP
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # the LAST block of the stage gets this; the ramp starts at 0

    @property
    def q_method(self) -> str:
        """The query's projection: as k/v, except ``avg`` (the official code pools keys and values only)."""
        return "linear" if self.qkv_proj_method == "avg" else self.qkv_proj_method

    def projected_shape(self, h: int, w: int, kind: str) -> tuple[int, int]:
        """``(H', W')`` of the query (``kind="q"``) or key/value (``"kv"``) map of an ``h x w`` token map.

        ``linear`` keeps the map; ``dw_bn`` is a strided convolution; ``avg`` pools in ceil mode (official).
        """
        method = self.q_method if kind == "q" else self.qkv_proj_method
        if method == "linear":
            return h, w
        stride, pad = (self.stride_q, self.padding_q) if kind == "q" else (self.stride_kv, self.padding_kv)
        ceil = method == "avg"
        return conv_out(h, self.kernel_qkv, stride, pad, ceil), conv_out(w, self.kernel_qkv, stride, pad, ceil)

    def kv_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(H', W')`` of the key/value map of an ``h x w`` token map (7x7 from 14x14 in released models)."""
        return self.projected_shape(h, w, "kv")

    def drop_path_rates(self) -> list[float]:
        """Per-block stochastic-depth rates: the official per-stage ``linspace(0, rate, depth)``."""
        if self.depth == 1:
            return [0.0]
        return [self.drop_path_rate * j / (self.depth - 1) for j in range(self.depth)]


@dataclass(frozen=True)
class CvTConfig:
    """A whole CvT. ``stages`` holds one :class:`StageConfig` per stage (three in every released model)."""

    stages: tuple[StageConfig, ...]
    num_classes: int = 1000  # 0 -> no head, the model returns pooled features
    in_chans: int = 3
    activation: str = "quick_gelu"  # what the released weights were trained with; "gelu" = HF numerics
    init: str = "trunc_norm"
    layer_norm_eps: float = 1e-5
    img_size: int = 224  # the resolution the model is meant for; any H, W works at run time
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if not self.stages:
            raise ConfigError("stages: a CvT needs at least one stage")
        _check(self.num_classes >= 0, "num_classes", f"must be >= 0, got {self.num_classes}")
        _check(self.in_chans >= 1, "in_chans", f"must be >= 1, got {self.in_chans}")
        _check(self.activation in ACTIVATIONS, "activation", f"{self.activation!r} is not one of {ACTIVATIONS}")
        _check(self.init in INITS, "init", f"{self.init!r} is not one of {INITS}")
        _check(self.layer_norm_eps > 0, "layer_norm_eps", "must be > 0")
        _check(self.img_size >= 1, "img_size", f"must be >= 1, got {self.img_size}")
        for i, s in enumerate(self.stages):
            p = f"stages[{i}]."
            for name in ("embed_dim", "depth", "num_heads", "patch_size", "patch_stride", "kernel_qkv"):
                value = getattr(s, name)
                _check(isinstance(value, int) and value >= 1, p + name, f"must be a positive integer, got {value!r}")
            for name in ("stride_q", "stride_kv"):
                _check(getattr(s, name) >= 1, p + name, f"must be >= 1, got {getattr(s, name)}")
            for name in ("patch_padding", "padding_q", "padding_kv"):
                _check(getattr(s, name) >= 0, p + name, f"must be >= 0, got {getattr(s, name)}")
            _check(
                s.embed_dim % s.num_heads == 0,
                p + "num_heads",
                f"{s.num_heads} heads do not divide embed_dim {s.embed_dim}",
            )
            _check(s.mlp_ratio > 0, p + "mlp_ratio", f"must be > 0, got {s.mlp_ratio}")
            _check(
                s.qkv_proj_method in PROJ_METHODS,
                p + "qkv_proj_method",
                f"{s.qkv_proj_method!r} is not one of {PROJ_METHODS}",
            )
            if s.qkv_proj_method == "avg":  # nn.AvgPool2d refuses padding above half the kernel
                for name in ("padding_kv",):
                    _check(getattr(s, name) <= s.kernel_qkv // 2, p + name, "must be <= kernel_qkv // 2 with 'avg'")
            for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
                value = getattr(s, name)
                _check(0.0 <= value < 1.0, p + name, f"must be in [0, 1), got {value}")
        # Every map must stay non-empty at the nominal resolution (a kernel/stride/padding that
        # swallows the image is a config error, not a run-time shape crash deep inside a conv).
        try:
            self.feature_shapes(self.img_size, self.img_size)
        except ValueError as e:
            raise ConfigError(f"{e} (at img_size={self.img_size})") from None

    # ------------------------------------------------------------------ geometry
    def feature_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Per-stage ``(C, H, W)`` of the token map for an input of ``height x width``.

        Raises ``ValueError`` naming the stage and field when a map (or its key/value map) would be empty.
        """
        out = []
        h, w = height, width
        for i, s in enumerate(self.stages):
            h = conv_out(h, s.patch_size, s.patch_stride, s.patch_padding)
            w = conv_out(w, s.patch_size, s.patch_stride, s.patch_padding)
            if h < 1 or w < 1:
                raise ValueError(
                    f"stages[{i}].patch_size/patch_stride/patch_padding leave an empty {h}x{w} map "
                    f"for a {height}x{width} input"
                )
            for kind in ("q", "kv"):
                hk, wk = s.projected_shape(h, w, kind)
                if hk < 1 or wk < 1:
                    raise ValueError(
                        f"stages[{i}].kernel_qkv/stride_{kind}/padding_{kind} leave an empty {hk}x{wk} "
                        f"{kind} map for a {height}x{width} input"
                    )
            out.append((s.embed_dim, h, w))
        return out

    @property
    def num_features(self) -> int:
        return self.stages[-1].embed_dim

    @property
    def reductions(self) -> list[int]:
        """Cumulative stride of each stage's map (4, 8, 16 for the released models)."""
        out, r = [], 1
        for s in self.stages:
            r *= s.patch_stride
            out.append(r)
        return out

    def replace(self, **changes: Any) -> CvTConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ native JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CvTConfig:
        d = dict(d)
        d.pop("extra", None)  # files written before 0.2 kept labels and preprocessing here (now PretrainedSpec)
        stages = d.pop("stages", None)
        if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
            raise ConfigError("stages: expected a list of per-stage mappings")
        _reject_unknown(d, {f.name for f in dataclasses.fields(cls)} - {"stages"}, "")
        stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
        parsed = []
        for i, s in enumerate(stages):
            if not isinstance(s, Mapping):
                raise ConfigError(f"stages[{i}]: expected a mapping, got {type(s).__name__}")
            _reject_unknown(s, stage_fields, f"stages[{i}].")
            try:
                parsed.append(StageConfig(**s))
            except TypeError as e:  # a required field is missing
                raise ConfigError(f"stages[{i}]: {e}") from None
        return cls(stages=tuple(parsed), **d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> CvTConfig:
        p = Path(text_or_path)
        text = p.read_text() if not str(text_or_path).lstrip().startswith("{") else str(text_or_path)
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ official / TF-port SPEC
    @classmethod
    def from_official_spec(cls, spec: Mapping[str, Any], **overrides: Any) -> CvTConfig:
        """Build from the official yaml ``MODEL.SPEC`` dict (``NUM_STAGES``, ``DIM_EMBED``, ``DEPTH``, ...).

        Unknown keys are rejected; lists must have ``NUM_STAGES`` entries; ``POS_EMBED`` must be all false
        (no released model uses one and this library has none).
        """
        spec = {str(k).upper(): v for k, v in spec.items()}
        known = set(_OFFICIAL_KEYS) | {"NUM_STAGES", "INIT", "POS_EMBED"}
        _reject_unknown(spec, known, "SPEC.")
        n = spec.get("NUM_STAGES", len(spec.get("DEPTH", ())))
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"SPEC.NUM_STAGES: must be a positive integer, got {n!r}")
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
                    raise ConfigError(f"SPEC: missing {_ATTR_TO_OFFICIAL[req]} (needed for stage {i})")
        kwargs: dict[str, Any] = {"init": str(spec.get("INIT", "trunc_norm"))}
        kwargs.update(overrides)
        return cls(stages=tuple(StageConfig(**s) for s in per_stage), **kwargs)

    def to_official_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"INIT": self.init, "NUM_STAGES": len(self.stages)}
        for key, attr in _OFFICIAL_KEYS.items():
            spec[key] = [getattr(s, attr) for s in self.stages]
        spec["POS_EMBED"] = [False] * len(self.stages)
        return spec

    # ------------------------------------------------------------------ HF transformers config.json
    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> CvTConfig:
        """Build from an HF ``CvtConfig`` dict (``config.json``); activation defaults to HF's exact GELU.

        The class names (``id2label``) are not architecture: :func:`hf_labels` reads them.
        """
        if hf.get("model_type", "cvt") != "cvt":
            raise ConfigError(f"model_type: expected 'cvt', got {hf.get('model_type')!r}")
        depth = hf.get("depth", (1, 2, 10))
        n = len(depth) if isinstance(depth, Sequence) else 0
        if n < 1:
            raise ConfigError(f"depth: expected a list, got {depth!r}")
        hf_defaults = {  # HF's own defaults for fields a config.json may omit
            "patch_sizes": (7, 3, 3), "patch_stride": (4, 2, 2), "patch_padding": (2, 1, 1),
            "embed_dim": (64, 192, 384), "num_heads": (1, 3, 6), "mlp_ratio": (4.0,) * 3,
            "attention_drop_rate": (0.0,) * 3, "drop_rate": (0.0,) * 3, "drop_path_rate": (0.0, 0.0, 0.1),
            "qkv_bias": (True,) * 3, "cls_token": (False, False, True), "qkv_projection_method": ("dw_bn",) * 3,
            "kernel_qkv": (3,) * 3, "padding_kv": (1,) * 3, "stride_kv": (2,) * 3, "padding_q": (1,) * 3,
            "stride_q": (1,) * 3,
        }  # fmt: skip
        per_stage: list[dict[str, Any]] = [{} for _ in range(n)]
        for key, attr in _HF_KEYS.items():
            for i, v in enumerate(_as_list(hf.get(key, hf_defaults.get(key)), key, n)):
                per_stage[i][attr] = v
        kwargs: dict[str, Any] = {"activation": "gelu", "in_chans": int(hf.get("num_channels", 3))}
        id2label = hf.get("id2label")
        if id2label:
            kwargs["num_classes"] = len(id2label)
        elif "num_labels" in hf:
            kwargs["num_classes"] = int(hf["num_labels"])
        kwargs.update(overrides)
        return cls(stages=tuple(StageConfig(**s) for s in per_stage), **kwargs)

    def to_hf_config(self, labels: Sequence[str] | None = None) -> dict[str, Any]:
        """An HF ``config.json`` dict that ``transformers.CvtForImageClassification.from_pretrained`` accepts.

        Note HF always runs exact GELU: a ``quick_gelu`` model saved this way gives slightly different
        logits in transformers (the released checkpoints on the hub have the same caveat).
        """
        labels = list(labels or [])
        if len(labels) != self.num_classes:
            labels = [f"LABEL_{i}" for i in range(self.num_classes)]
        d: dict[str, Any] = {
            "architectures": ["CvtForImageClassification"],
            "model_type": "cvt",
            "num_channels": self.in_chans,
        }
        for key, attr in _HF_KEYS.items():
            d[key] = [getattr(s, attr) for s in self.stages]
        d["initializer_range"] = 0.02
        d["layer_norm_eps"] = 1e-12  # unused by HF's model (its LayerNorms keep eps=1e-5), kept for fidelity
        d["id2label"] = {str(i): name for i, name in enumerate(labels)}
        d["label2id"] = {name: i for i, name in enumerate(labels)}
        return d


# official SPEC key -> StageConfig attribute
_OFFICIAL_KEYS = {
    "PATCH_SIZE": "patch_size",
    "PATCH_STRIDE": "patch_stride",
    "PATCH_PADDING": "patch_padding",
    "DIM_EMBED": "embed_dim",
    "NUM_HEADS": "num_heads",
    "DEPTH": "depth",
    "MLP_RATIO": "mlp_ratio",
    "ATTN_DROP_RATE": "attn_drop_rate",
    "DROP_RATE": "drop_rate",
    "DROP_PATH_RATE": "drop_path_rate",
    "QKV_BIAS": "qkv_bias",
    "CLS_TOKEN": "cls_token",
    "QKV_PROJ_METHOD": "qkv_proj_method",
    "KERNEL_QKV": "kernel_qkv",
    "PADDING_KV": "padding_kv",
    "STRIDE_KV": "stride_kv",
    "PADDING_Q": "padding_q",
    "STRIDE_Q": "stride_q",
}
_ATTR_TO_OFFICIAL = {v: k for k, v in _OFFICIAL_KEYS.items()}

# HF CvtConfig field -> StageConfig attribute
_HF_KEYS = {
    "patch_sizes": "patch_size",
    "patch_stride": "patch_stride",
    "patch_padding": "patch_padding",
    "embed_dim": "embed_dim",
    "num_heads": "num_heads",
    "depth": "depth",
    "mlp_ratio": "mlp_ratio",
    "attention_drop_rate": "attn_drop_rate",
    "drop_rate": "drop_rate",
    "drop_path_rate": "drop_path_rate",
    "qkv_bias": "qkv_bias",
    "cls_token": "cls_token",
    "qkv_projection_method": "qkv_proj_method",
    "kernel_qkv": "kernel_qkv",
    "padding_kv": "padding_kv",
    "stride_kv": "stride_kv",
    "padding_q": "padding_q",
    "stride_q": "stride_q",
}


def feature_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's rule for choosing among ``n`` stages, as sorted absolute indices.

    ``None``: all; an int ``k``: the last ``k``; a sequence: those (negative counts from the end). An index
    outside the model raises :class:`~cvt.core.errors.ConfigError` (no wrapping around).
    """
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ConfigError(f"indices: last-n {indices} is out of range (1 to {n}) for a {n}-stage model")
        return list(range(n - indices, n))
    take = set()
    for i in indices:
        if not -n <= i < n:
            raise ConfigError(f"indices: stage {i} is out of range ({-n} to {n - 1}) for a {n}-stage model")
        take.add(i % n)
    if not take:
        raise ConfigError("indices: an empty list selects no stage")
    return sorted(take)


def hf_labels(hf: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names of an HF ``config.json`` (``id2label`` in index order); ``None`` without real names.

    HF fills ``id2label`` with ``LABEL_<i>`` placeholders when a model has no names: those do not count.
    """
    id2label = hf.get("id2label") or {}
    try:
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (TypeError, ValueError):
        raise ConfigError("id2label: keys must be class indices") from None
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def conv_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Output length of a convolution / pooling along one axis (PyTorch semantics)."""
    n = size + 2 * padding - kernel
    if ceil_mode:
        out = math.ceil(n / stride) + 1
        # PyTorch drops a last window that would start inside the right padding only
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return n // stride + 1


def depthwise_taps(kernel: int, stride: int) -> list[tuple[int, int, tuple[slice, slice]]]:
    """A "valid" ``kernel x kernel`` depthwise convolution of a padded channels-last map ``x`` as its taps:
    ``(i, j, (rows, cols))`` with ``conv(x) = sum(x[:, rows, cols, :] * w[i, j])`` over all taps.

    Rows ``i, i + stride, ...`` up to the last window start, whose window ends at the map's last row: the slice
    end is written relative to the end (``i - kernel + 1``), so the taps hold for any size, also a traced one.
    """

    def axis(i: int) -> slice:
        return slice(i, (i - kernel + 1) or None, stride)

    return [(i, j, (axis(i), axis(j))) for i in range(kernel) for j in range(kernel)]


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {problem}")


def _as_list(value: Any, name: str, n: int) -> list[Any]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ConfigError(f"{name}: expected a list of {n} per-stage values, got {value!r}")
    if len(value) != n:
        raise ConfigError(f"{name}: expected {n} per-stage values, got {len(value)} ({list(value)!r})")
    return list(value)


def _reject_unknown(d: Mapping[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (valid: {', '.join(sorted(known))})")

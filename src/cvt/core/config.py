"""Typed, validated architecture configuration for CvT.

A model is a tuple of :class:`StageConfig` (one per stage) plus a few global fields in :class:`CvTConfig`.
Both are frozen dataclasses: build variants with :func:`dataclasses.replace` or :meth:`CvTConfig.replace`.

Written here once and read by every front-end (PyTorch, Keras, Flax), the MAC counter and the attention maps:

* validation, with the shared choices :data:`ACTIVATIONS` and :data:`PROJ_METHODS` (:func:`check_activation`,
  :func:`check_proj_method`, :func:`head_width` are also what the front-ends' modules check);
* geometry (:func:`conv_out`, :meth:`StageConfig.kv_shape`, :meth:`CvTConfig.feature_shapes`);
* the module arguments of a stage's blocks (:func:`block_args`, :func:`attention_args`).

The native spelling is :meth:`CvTConfig.to_dict` / JSON. Foreign spellings (the official ``MODEL.SPEC``, HF's
``config.json``) live in :mod:`cvt.core.spellings`; ``CvTConfig.from_official_spec`` and friends delegate there.

Framework-free: imports nothing but :mod:`.errors` and :mod:`.labels`.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bounds
from .errors import ConfigError, shorten
from .labels import LabelSet

ACTIVATIONS = ("quick_gelu", "gelu")  # quick_gelu: what the released weights were trained with; gelu: exact erf (HF)
QUICK_GELU_ALPHA = 1.702  # quick_gelu(x) = x * sigmoid(1.702 x)
PROJ_METHODS = ("dw_bn", "avg", "linear")  # depthwise conv + BatchNorm | average pooling (ceil mode) | identity
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
    head_drop_rate: float = 0.0  # dropout on the pooled features before the head (timm's drop_rate; official: 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if not self.stages:
            raise ConfigError("stages: a CvT needs at least one stage")
        # JSON types first (a string "false" is truthy, a float stride passes ">= 1"), then the bounds policy
        # (cvt.core.bounds), both before any geometry is computed or anything is built per block.
        check_types(self, "")
        for i, s in enumerate(self.stages):
            if not isinstance(s, StageConfig):
                raise ConfigError(f"stages[{i}]: expected a stage, got {shorten(s)}")
            check_types(s, f"stages[{i}].")
        check_bounds(self)
        _check(self.num_classes >= 0, "num_classes", f"must be >= 0, got {self.num_classes}")
        _check(self.in_chans >= 1, "in_chans", f"must be >= 1, got {self.in_chans}")
        check_activation(self.activation)
        _check(self.init in INITS, "init", f"{shorten(self.init)} is not one of {INITS}")
        _check(self.layer_norm_eps > 0, "layer_norm_eps", "must be > 0")
        _check(self.img_size >= 1, "img_size", f"must be >= 1, got {self.img_size}")
        _check(0.0 <= self.head_drop_rate < 1.0, "head_drop_rate", f"must be in [0, 1), got {self.head_drop_rate}")
        for i, s in enumerate(self.stages):
            p = f"stages[{i}]."
            for name in ("embed_dim", "depth", "num_heads", "patch_size", "patch_stride", "kernel_qkv"):
                value = getattr(s, name)
                _check(
                    isinstance(value, int) and value >= 1, p + name, f"must be a positive integer, got {shorten(value)}"
                )
            for name in ("stride_q", "stride_kv"):
                _check(getattr(s, name) >= 1, p + name, f"must be >= 1, got {getattr(s, name)}")
            for name in ("patch_padding", "padding_q", "padding_kv"):
                _check(getattr(s, name) >= 0, p + name, f"must be >= 0, got {getattr(s, name)}")
            head_width(s.embed_dim, s.num_heads, p + "num_heads")
            _check(s.mlp_ratio > 0, p + "mlp_ratio", f"must be > 0, got {s.mlp_ratio}")
            check_proj_method(s.qkv_proj_method, p + "qkv_proj_method")
            if s.qkv_proj_method == "avg":  # nn.AvgPool2d refuses padding above half the kernel
                _check(s.padding_kv <= s.kernel_qkv // 2, p + "padding_kv", "must be <= kernel_qkv // 2 with 'avg'")
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
        """Width of the last stage's tokens (what the head reads)."""
        return self.stages[-1].embed_dim

    @property
    def has_cls_token(self) -> bool:
        """Whether the last stage has a cls token (the head then reads it; else the mean of the tokens)."""
        return self.stages[-1].cls_token

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
        if not self.head_drop_rate:  # written only when set, so files stay readable by cvt 0.3, which lacks it
            del d["head_drop_rate"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CvTConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"config: expected a mapping of fields, got {type(d).__name__} {shorten(d)}")
        d = dict(d)
        d.pop("extra", None)  # files written before 0.2 kept labels and preprocessing here (now PretrainedSpec)
        stages = d.pop("stages", None)
        if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
            raise ConfigError("stages: expected a list of per-stage mappings")
        reject_unknown(d, {f.name for f in dataclasses.fields(cls)} - {"stages"}, "")
        stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
        parsed = []
        for i, s in enumerate(stages):
            if not isinstance(s, Mapping):
                raise ConfigError(f"stages[{i}]: expected a mapping, got {type(s).__name__}")
            reject_unknown(s, stage_fields, f"stages[{i}].")
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

    # ------------------------------------------------------------------ foreign spellings (cvt.core.spellings)
    # NOTE: imported at call time: cvt.core.spellings builds CvTConfigs, so it imports this module.
    @classmethod
    def from_official_spec(cls, spec: Mapping[str, Any], **overrides: Any) -> CvTConfig:
        """Build from the official yaml ``MODEL.SPEC`` dict: :func:`cvt.core.spellings.from_official_spec`."""
        from .spellings import from_official_spec

        return from_official_spec(spec, **overrides)

    def to_official_spec(self) -> dict[str, Any]:
        """The official ``MODEL.SPEC`` dict: :func:`cvt.core.spellings.to_official_spec`."""
        from .spellings import to_official_spec

        return to_official_spec(self)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> CvTConfig:
        """Build from an HF ``config.json`` dict (exact GELU): :func:`cvt.core.spellings.from_hf_config`."""
        from .spellings import from_hf_config

        return from_hf_config(hf, **overrides)

    def to_hf_config(self, labels: LabelSet | Sequence[str] | str | None = None) -> dict[str, Any]:
        """An HF ``config.json`` dict (``labels``: names, a :class:`LabelSet` or a set's name such as
        ``"imagenet-1k"``): :func:`cvt.core.spellings.to_hf_config`."""
        from .spellings import to_hf_config

        return to_hf_config(self, labels)


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

    HF fills ``id2label`` with ``LABEL_<i>`` placeholders when a model has no names: those do not count
    (the placeholder rule: :mod:`cvt.core.labels`). Keys must be the class indices ``0..N-1`` without gaps
    (:func:`cvt.core.labels.names_by_index`, the rule of ``--labels``): a gapped map is refused, not renumbered.
    """
    from .labels import names_by_index  # NOTE local: this function alone is edited by the labels work

    id2label = hf.get("id2label") or {}
    if not isinstance(id2label, Mapping):
        raise ConfigError(f"config.json id2label: expected an index -> name mapping, got {type(id2label).__name__}")
    names = tuple(names_by_index(id2label, "config.json id2label"))
    if not names or LabelSet(names).placeholder:
        return None
    return names


def conv_out(size: Any, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> Any:
    """Output length of a convolution / pooling along one axis (PyTorch semantics).

    No branch and no comparison on ``size``, so it may also be a traced or symbolic scalar: Keras sizes the
    ``avg`` projection with this on maps whose size is known only at run time.
    """
    if not ceil_mode:
        return (size + 2 * padding - kernel) // stride + 1
    # Ceil mode counts a last partial window: ceil((size + 2p - k) / s) + 1 windows. But PyTorch drops a last window
    # that would start inside the right padding (windows start at i*s - p; kept while i*s < size + p). The two
    # bounds differ by the constant s + p - k, so which one holds depends on the kernel, stride and padding alone.
    if stride + padding <= kernel:
        return (size + 2 * padding - kernel + stride - 1) // stride + 1
    return (size + padding - 1) // stride + 1


def depthwise_taps(kernel: int, stride: int) -> list[tuple[int, int, tuple[slice, slice]]]:
    """A "valid" ``kernel x kernel`` depthwise convolution of a padded channels-last map ``x`` as its taps:
    ``(i, j, (rows, cols))`` with ``conv(x) = sum(x[:, rows, cols, :] * w[i, j])`` over all taps.

    Rows ``i, i + stride, ...`` up to the last window start, whose window ends at the map's last row: the slice
    end is written relative to the end (``i - kernel + 1``), so the taps hold for any size, also a traced one.
    """

    def axis(i: int) -> slice:
        return slice(i, (i - kernel + 1) or None, stride)

    return [(i, j, (axis(i), axis(j))) for i in range(kernel) for j in range(kernel)]


# ---------------------------------------------------------------------------- shared by every front-end's modules
def check_activation(name: str, field: str = "activation") -> str:
    """``name`` when it is one of :data:`ACTIVATIONS`; else a :class:`ConfigError` naming ``field``."""
    _check(name in ACTIVATIONS, field, f"{shorten(name)} is not one of {ACTIVATIONS}")
    return name


def check_proj_method(method: str, field: str = "qkv_proj_method") -> str:
    """``method`` when it is one of :data:`PROJ_METHODS`; else a :class:`ConfigError` naming ``field``."""
    _check(method in PROJ_METHODS, field, f"{shorten(method)} is not one of {PROJ_METHODS}")
    return method


def head_width(dim: int, num_heads: int, field: str = "num_heads") -> int:
    """Each head's width ``dim // num_heads``; a :class:`ConfigError` naming ``field`` when the heads do not
    divide ``dim``."""
    _check(dim % num_heads == 0, field, f"{num_heads} heads do not divide embed_dim {dim}")
    return dim // num_heads


def attention_args(stage: StageConfig) -> dict[str, Any]:
    """The ``Attention`` keyword arguments of a block of ``stage``, besides ``dim``, ``num_heads`` and
    ``proj_drop`` (which a ``Block`` passes from its own): the same names in every front-end."""
    return {
        "qkv_bias": stage.qkv_bias,
        "attn_drop": stage.attn_drop_rate,
        "q_method": stage.q_method,  # avg pools keys and values only
        "kv_method": stage.qkv_proj_method,
        "kernel_size": stage.kernel_qkv,
        "stride_q": stage.stride_q,
        "stride_kv": stage.stride_kv,
        "padding_q": stage.padding_q,
        "padding_kv": stage.padding_kv,
        "with_cls_token": stage.cls_token,
    }


def block_args(stage: StageConfig, drop_path_rate: float, activation: str, eps: float) -> dict[str, Any]:
    """The keyword arguments of one ``Block`` of ``stage`` in every front-end: ``Block(**block_args(...))``.

    ``drop_path_rate``: this block's stochastic depth (:meth:`StageConfig.drop_path_rates`); ``activation`` and
    ``eps``: the model's (:class:`CvTConfig`). The rest is :func:`attention_args`.
    """
    return {
        "dim": stage.embed_dim,
        "num_heads": stage.num_heads,
        "mlp_ratio": stage.mlp_ratio,
        "drop_path_rate": drop_path_rate,
        "drop": stage.drop_rate,  # after the attention's projection and in the MLP
        "activation": activation,
        "eps": eps,
        **attention_args(stage),
    }


# field type in the dataclass annotations -> the Python types its JSON value may have (bool is no int here)
_JSON_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_types(obj: Any, prefix: str) -> None:
    """A :class:`ConfigError` naming the first field of a config dataclass whose value has the wrong JSON type
    (``qkv_bias: "false"``, ``patch_stride: 2.0`` or ``"2"``, ``depth: true``)."""
    for f in dataclasses.fields(obj):
        allowed = _JSON_TYPES.get(str(f.type))
        if allowed is None:
            continue
        value = getattr(obj, f.name)
        if _numpy_number(value, str(f.type)):  # a numpy integer / float from Python code: the same number
            value = int(value) if str(f.type) == "int" else float(value)
            object.__setattr__(obj, f.name, value)
        ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{prefix}{f.name}: must be {_TYPE_WORDS[str(f.type)]}, got {shorten(value)}")


def _numpy_number(value: Any, kind: str) -> bool:
    """A numpy scalar of the field's kind (``np.int64`` for an int field, any numpy integer or float for a float
    field): never found in JSON, so it came from Python code and is taken as the number it is."""
    name = type(value).__module__
    if name != "numpy" or isinstance(value, (bool, int, float)):
        return False
    is_int = isinstance(value, numbers.Integral) and type(value).__name__ != "bool_"
    return is_int if kind == "int" else kind == "float" and (is_int or isinstance(value, numbers.Real))


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def check_bounds(config: CvTConfig) -> None:
    """Every size of ``config`` within :mod:`cvt.core.bounds` (one :class:`ConfigError` naming the field)."""
    bounds.check(len(config.stages), bounds.STAGES, "stages: count")
    bounds.check(config.img_size, bounds.IMG_SIZE, "img_size")
    bounds.check(config.num_classes, bounds.NUM_CLASSES, "num_classes")
    bounds.check(config.in_chans, bounds.IN_CHANS, "in_chans")
    for i, s in enumerate(config.stages):
        p = f"stages[{i}]."
        for name, limit in (
            ("depth", bounds.DEPTH),
            ("embed_dim", bounds.EMBED_DIM),
            ("num_heads", bounds.NUM_HEADS),
            ("mlp_ratio", bounds.MLP_RATIO),
            ("patch_size", bounds.KERNEL),
            ("kernel_qkv", bounds.KERNEL),
            ("patch_stride", bounds.STRIDE),
            ("stride_q", bounds.STRIDE),
            ("stride_kv", bounds.STRIDE),
            ("patch_padding", bounds.PADDING),
            ("padding_q", bounds.PADDING),
            ("padding_kv", bounds.PADDING),
        ):
            bounds.check(getattr(s, name), limit, p + name)
    bounds.check(sum(s.depth for s in config.stages), bounds.TOTAL_DEPTH, "stages[*].depth: total")


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {problem}")


def reject_unknown(d: Mapping[str, Any], known: set[str], prefix: str) -> None:
    """A :class:`ConfigError` naming the first key of ``d`` that is not in ``known`` (and the valid ones)."""
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (valid: {', '.join(sorted(known))})")

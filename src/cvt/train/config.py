"""Typed training configuration: dataclasses, YAML loading, ``--set key=value`` overrides, validation.

A recipe is a YAML file with up to seven sections (``recipe``, ``model``, ``data``, ``augment``, ``optim``,
``schedule``, ``run``); anything it leaves out keeps the default below. The defaults ARE the embedded recipe:
a small CvT on scikit-learn's digits (``configs/digits.yaml`` spells the same values out).

Every problem is reported as one :class:`TrainConfigError` naming the key, what was wrong and what is valid,
before any data is read or any model is built.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.config import ConfigError, CvTConfig

DATA_KINDS = ("digits", "folder", "list")
OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("auto", "off", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_RANDAUG_RE = re.compile(r"^rand(-(m\d+(\.\d+)?|n\d+|mstd\d+(\.\d+)?|inc[01]|p\d+(\.\d+)?))*$")


class TrainConfigError(ConfigError):
    """An invalid training configuration (one line, names the key and lists what is valid)."""


# ---------------------------------------------------------------------------- sections
@dataclass
class RecipeInfo:
    """What a shipped recipe promises (free text; printed at the start of a run, not used by training)."""

    description: str = "the embedded default: a small CvT on scikit-learn's 8x8 digits, fixed 20% held-out split"
    command: str = "cvt train"
    hardware: str = "2 CPU cores"
    time: str = "about 2 minutes (1.5 of training)"
    expected: str = ">= 99.0% held-out top-1, above SVC (RBF) on the same split (about 98.3%)"


@dataclass
class ModelSection:
    name: str | None = "cvt-digits"  # architecture / checkpoint name (cvt list)
    spec: dict[str, Any] | None = None  # a full CvTConfig as a mapping (stages: [...]) instead of a name
    weights: str | None = None  # start from these weights (fine-tuning: a new head if the class count differs)
    activation: str | None = None  # quick_gelu (official) | gelu; default: the architecture's
    drop_path_rate: float | None = None  # override the LAST stage's drop-path rate (the one the paper varies)
    pretrained: bool = False  # download the released checkpoint `name` from the HF hub


@dataclass
class DataSection:
    kind: str = "digits"  # digits | folder (ROOT/train/<class>/*, ROOT/val/<class>/*) | list (CSV/JSON)
    root: str | None = None  # folder: the directory holding train/ and val/
    train: str | None = None  # list: CSV (path,label) or JSON file for training
    val: str | None = None  # list: the validation file
    img_size: int = 32  # training and evaluation resolution
    batch_size: int = 64  # GLOBAL batch per optimizer step: all processes and accumulation steps together
    eval_batch_size: int = 256  # per process
    workers: int = 1  # DataLoader worker processes per training process (PIL decoding runs there)
    # Evaluation geometry: < 1 resizes the short side to img_size / crop_pct and centre-crops; 1 squashes.
    # 0.875 below 384 is what `cvt predict` assumes for a model of that size (the released checkpoints' rule).
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] | None = None  # null: ImageNet's (0.485, 0.456, 0.406)
    std: tuple[float, float, float] | None = None  # null: ImageNet's (0.229, 0.224, 0.225)
    val_fraction: float = 0.2  # digits: stratified held-out fraction (fixed by split_seed)
    split_seed: int = 0
    max_train_samples: int | None = None  # quick runs and tests: use only the first N (after a seeded shuffle)
    max_val_samples: int | None = None


@dataclass
class AugmentSection:
    random_resized_crop: bool = True  # else: resize (squash) to img_size
    scale: tuple[float, float] = (0.85, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (0.9, 1.1111)  # RandomResizedCrop aspect ratio
    translate: float = 0.1  # random shift, a fraction of img_size each way (0: off)
    hflip: float = 0.0  # digits are not mirror-symmetric; ImageNet recipes use 0.5
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; skipped when randaugment is set (timm)
    randaugment: str | None = None  # timm spelling, e.g. "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.0  # probability (pixel mode, one box)
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both on: probability of cutmix instead of mixup
    label_smoothing: float = 0.1


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | sgd
    lr: float = 2.0e-3  # at a global batch of lr_batch; scaled linearly to data.batch_size
    lr_batch: int = 64
    weight_decay: float = 0.05  # never on norms, biases and the cls token
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    eps: float = 1.0e-8
    clip_grad: float | None = None  # max global L2 norm of the gradients
    accum_steps: int = 1  # micro-batches per optimizer step (data.batch_size is split across them)


@dataclass
class ScheduleSection:
    epochs: int = 40
    warmup_epochs: float = 2.0  # linear warm-up from warmup_lr, per step
    warmup_lr: float = 1.0e-6
    min_lr: float = 1.0e-5  # cosine floor


@dataclass
class RunSection:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)
    amp: str = "auto"  # auto: bf16 (or fp16 + GradScaler) on CUDA, fp32 on CPU | off | fp16 | bf16
    # torch intra-op threads per process (CPU; null: torch's choice). The digits default uses 1: its small
    # matrices gain little from a second thread, and one thread cannot stall on a busy machine (two threads
    # spin-waiting on a shared core made steps 50x slower here).
    threads: int | None = 1
    ema: float | None = None  # EMA decay (e.g. 0.9998); evaluated and exported instead of the raw weights
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    sync_bn: bool = False  # DDP on CUDA: SyncBatchNorm, so BN statistics span the global batch
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch (0: at epoch ends only)
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    tensorboard: bool = False  # also log to OUT/tensorboard (needs the tensorboard package)
    progress: bool = True  # per-epoch progress bar on a terminal
    plots: bool = True  # learning-curve PNG (needs matplotlib: the `train` extra)
    baseline: bool = True  # digits: fit scikit-learn's SVC (RBF) on the same split and print it beside
    out: str | None = None  # output directory; default runs/<recipe name>


@dataclass
class TrainConfig:
    """The whole recipe. ``TrainConfig()`` is the digits default."""

    recipe: RecipeInfo = field(default_factory=RecipeInfo)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (lists for tuples): YAML / JSON / ``torch.load(weights_only=True)`` safe."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """Block-style sections, one key per line, short lists inline (what a person edits)."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        cfg = _build(cls, d, "")
        validate(cfg)
        return cfg

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)

    # ------------------------------------------------------------------ derived values
    def scaled_lr(self) -> float:
        """``optim.lr`` scaled linearly from ``optim.lr_batch`` to the global ``data.batch_size``."""
        return self.optim.lr * self.data.batch_size / self.optim.lr_batch

    def resolve_model_config(self, num_classes: int) -> CvTConfig:
        """The architecture this recipe trains, with ``num_classes`` and the data's ``img_size``."""
        from ..core.presets import UnknownModelError, get_config

        m = self.model
        if m.spec is not None:
            try:
                base = CvTConfig.from_dict(m.spec)
            except ConfigError as e:
                raise TrainConfigError(f"model.spec.{e}") from None
        else:
            try:
                base = get_config(str(m.name))
            except UnknownModelError:
                raise TrainConfigError(f"model.name: unknown model {m.name!r} (valid: {_model_names()})") from None
        changes: dict[str, Any] = {"num_classes": num_classes, "img_size": self.data.img_size}
        if m.activation is not None:
            changes["activation"] = m.activation
        if m.drop_path_rate is not None:
            last = dataclasses.replace(base.stages[-1], drop_path_rate=m.drop_path_rate)
            changes["stages"] = (*base.stages[:-1], last)
        try:
            return base.replace(**changes)
        except ConfigError as e:
            raise TrainConfigError(f"model: {e}") from None


class _Dumper(yaml.SafeDumper):
    pass


def _flow_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)  # model.spec stages stay in block style
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _flow_list)


def _model_names() -> str:
    from ..core.presets import list_models

    return ", ".join(list_models())


# ---------------------------------------------------------------------------- loading
def load_config(
    source: str | Path | Mapping[str, Any] | TrainConfig | None = None, overrides: Sequence[str] = ()
) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML path, a mapping, a config or ``None`` (the default).

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML (``1e-3``, ``[0.5, 1.0]``,
    ``null``, ``true``).
    """
    if isinstance(source, TrainConfig):
        raw = source.to_dict()
    elif source is None:
        raw = {}
    elif isinstance(source, Mapping):
        raw = _plain(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise TrainConfigError(f"--config: {path}: no such file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return TrainConfig.from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` for ``"a.b=value"`` (in place)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TrainConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------- typed building
def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TrainConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise TrainConfigError(f"{prefix}{key}: unknown key (valid: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (accepting YAML's spellings) and convert it."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(name, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(name, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                out = float(value)
            except ValueError:
                raise _type_error(name, "a number", value) from None
        else:
            raise _type_error(name, "a number", value)
        if not math.isfinite(out):
            raise _type_error(name, "a finite number", value)
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric path component
        raise _type_error(name, "a string", value)
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise _type_error(name, f"a list of {len(args)} values", value)
        if len(args) != len(value):
            raise _type_error(name, f"a list of {len(args)} values", value)
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(name, "a mapping", value)
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} for {name}")  # pragma: no cover - a bug in this module


def _type_error(name: str, expected: str, value: Any) -> TrainConfigError:
    return TrainConfigError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- semantic validation
def _choice(value: Any, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise TrainConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def _range(ok: bool, name: str, what: str, value: Any) -> None:
    if not ok:
        raise TrainConfigError(f"{name}: must be {what}, got {value!r}")


def validate(cfg: TrainConfig, check_paths: bool = False) -> None:
    """Raise :class:`TrainConfigError` on the first invalid value. ``check_paths`` also checks data paths."""
    m, d, a, o, s, r = cfg.model, cfg.data, cfg.augment, cfg.optim, cfg.schedule, cfg.run
    if (m.name is None) == (m.spec is None):
        raise TrainConfigError("model: give exactly one of model.name (an architecture) or model.spec (a CvTConfig)")
    if m.name is not None:
        from ..core.presets import get_checkpoint, list_models

        if m.name.lower() not in list_models():
            raise TrainConfigError(f"model.name: unknown model {m.name!r} (valid: {_model_names()})")
        if m.pretrained and get_checkpoint(m.name) is None:
            raise TrainConfigError(f"model.pretrained: {m.name!r} is an architecture, not a released checkpoint")
    if m.pretrained and m.weights:
        raise TrainConfigError("model: give model.weights or model.pretrained, not both")
    if m.activation is not None:
        _choice(m.activation, ("quick_gelu", "gelu"), "model.activation")
    if m.drop_path_rate is not None:
        _range(0 <= m.drop_path_rate < 1, "model.drop_path_rate", "in [0, 1)", m.drop_path_rate)
    cfg.resolve_model_config(num_classes=2)  # the architecture itself is valid at this img_size

    _choice(d.kind, DATA_KINDS, "data.kind")
    _choice(d.interpolation, INTERPOLATIONS, "data.interpolation")
    _range(d.img_size >= 8, "data.img_size", ">= 8", d.img_size)
    _range(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _range(d.eval_batch_size >= 1, "data.eval_batch_size", ">= 1", d.eval_batch_size)
    _range(d.workers >= 0, "data.workers", ">= 0", d.workers)
    _range(0 < d.crop_pct <= 1, "data.crop_pct", "in (0, 1]", d.crop_pct)
    _range(d.std is None or all(v > 0 for v in d.std), "data.std", "positive", d.std)
    _range(0 < d.val_fraction < 1, "data.val_fraction", "in (0, 1)", d.val_fraction)
    for name in ("max_train_samples", "max_val_samples"):
        v = getattr(d, name)
        _range(v is None or v >= 1, f"data.{name}", ">= 1 or null", v)
    if d.kind == "folder" and not d.root:
        raise TrainConfigError("data.root: required with data.kind: folder (a directory holding train/ and val/)")
    if d.kind == "list" and not (d.train and d.val):
        raise TrainConfigError("data.train / data.val: both required with data.kind: list (CSV or JSON files)")
    if check_paths:
        check_data_paths(d)

    lo, hi = a.scale
    _range(0 < lo <= hi <= 1, "augment.scale", "0 < min <= max <= 1", list(a.scale))
    _range(0 < a.ratio[0] <= a.ratio[1], "augment.ratio", "0 < min <= max", list(a.ratio))
    _range(0 <= a.translate < 0.5, "augment.translate", "in [0, 0.5)", a.translate)
    for name in ("hflip", "random_erasing", "mix_prob", "switch_prob"):
        _range(0 <= getattr(a, name) <= 1, f"augment.{name}", "a probability in [0, 1]", getattr(a, name))
    for name in ("mixup", "cutmix", "color_jitter"):
        _range(getattr(a, name) >= 0, f"augment.{name}", ">= 0", getattr(a, name))
    _range(0 <= a.label_smoothing < 1, "augment.label_smoothing", "in [0, 1)", a.label_smoothing)
    if a.randaugment is not None and not _RANDAUG_RE.match(a.randaugment):
        raise TrainConfigError(
            f"augment.randaugment: {a.randaugment!r} is not a RandAugment spec "
            "(rand-m<magnitude>[-n<ops>][-mstd<std>][-inc<0|1>][-p<prob>], e.g. rand-m9-mstd0.5-inc1)"
        )

    _choice(o.name, OPTIMIZERS, "optim.name")
    _range(o.lr > 0, "optim.lr", "> 0", o.lr)
    _range(o.lr_batch >= 1, "optim.lr_batch", ">= 1", o.lr_batch)
    _range(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    _range(0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    _range(all(0 <= b < 1 for b in o.betas), "optim.betas", "in [0, 1)", list(o.betas))
    _range(o.eps > 0, "optim.eps", "> 0", o.eps)
    _range(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", "> 0 or null", o.clip_grad)
    _range(o.accum_steps >= 1, "optim.accum_steps", ">= 1", o.accum_steps)
    if d.batch_size % o.accum_steps:
        raise TrainConfigError(
            f"optim.accum_steps: {o.accum_steps} does not divide data.batch_size {d.batch_size} "
            "(the global batch is split into accum_steps micro-batches)"
        )

    _range(s.epochs >= 1, "schedule.epochs", ">= 1", s.epochs)
    _range(0 <= s.warmup_epochs < s.epochs, "schedule.warmup_epochs", f"in [0, epochs={s.epochs})", s.warmup_epochs)
    _range(s.warmup_lr >= 0, "schedule.warmup_lr", ">= 0", s.warmup_lr)
    _range(s.min_lr >= 0, "schedule.min_lr", ">= 0", s.min_lr)

    _choice(r.device, DEVICES, "run.device")
    _choice(r.amp, AMP_MODES, "run.amp")
    _range(r.threads is None or r.threads >= 1, "run.threads", ">= 1 or null", r.threads)
    _range(r.ema is None or 0 < r.ema < 1, "run.ema", "a decay in (0, 1) or null", r.ema)
    _range(r.checkpoint_every_steps >= 0, "run.checkpoint_every_steps", ">= 0", r.checkpoint_every_steps)
    _range(r.eval_every >= 1, "run.eval_every", ">= 1", r.eval_every)


def check_data_paths(d: DataSection) -> None:
    """The data the recipe names exists (the layout itself is checked when the data sets are built)."""
    if d.kind == "folder":
        root = Path(str(d.root)).expanduser()
        if not root.is_dir():
            raise TrainConfigError(f"data.root: {root} is not a directory")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise TrainConfigError(
                    f"data.root: {root} has no {split}/ folder (expected {root}/train/<class>/... and "
                    f"{root}/val/<class>/...)"
                )
    elif d.kind == "list":
        for name in ("train", "val"):
            p = Path(str(getattr(d, name))).expanduser()
            if not p.is_file():
                raise TrainConfigError(f"data.{name}: {p}: no such file")


def default_out_dir(cfg: TrainConfig, config_path: str | Path | None = None) -> Path:
    """``run.out`` or ``runs/<recipe file stem>`` (``runs/digits`` for the embedded default)."""
    if cfg.run.out:
        return Path(cfg.run.out).expanduser()
    stem = Path(config_path).stem if config_path else "digits"
    return Path("runs") / stem

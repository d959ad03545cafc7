"""Typed training recipes: dataclasses whose fields carry their own rules, YAML loading, ``--set`` overrides.

A recipe is a YAML file with up to seven sections (``recipe``, ``model``, ``data``, ``augment``, ``optim``,
``schedule``, ``run``); anything it leaves out keeps the default below. The defaults ARE the embedded recipe:
a small CvT on scikit-learn's digits (``configs/digits.yaml`` spells the same values out).

Each field states its rule where it is declared: ``option(default, CHOICES)`` or ``bound(default, "> 0")``
(the bound is both the check and the message: ``> x``, ``>= x``, ``in [a, b)`` with any brackets, each value of
a tuple, ``or null`` for optional fields). Rules between fields sit in the section's ``__post_init__``.
Building a section checks it, so every problem is one :class:`TrainConfigError` naming the key, what was
wrong and what is valid, before any data is read or any model is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..core import bounds
from ..core.config import ACTIVATIONS, CvTConfig
from ..core.errors import ConfigError, first_line, shorten
from ..core.hub import is_hub_id
from ..core.presets import get_checkpoint, get_config, list_models
from ..core.spec import INTERPOLATIONS
from ..data.augment import RandAugment

DATA_KINDS = ("digits", "folder", "list")
OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("auto", "off", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")


class TrainConfigError(ConfigError):
    """An invalid training configuration (one line, names the key and lists what is valid)."""


def option(default: Any, choices: Sequence[str]) -> Any:
    """A field whose value is one of ``choices`` (or ``None`` when the field is optional)."""
    return field(default=default, metadata={"choices": tuple(choices)})


def bound(default: Any, rule: str, limit: bounds.Limit | None = None) -> Any:
    """A field whose value (each value, for a tuple) satisfies ``rule``, e.g. ``"> 0"``, ``"in [0, 1)"``; a size that
    allocates or spawns also stays within ``limit``, the library's bounds policy (:mod:`cvt.core.bounds`)."""
    return field(default=default, metadata={"bound": rule, "limit": limit})


_BOUND = re.compile(r"(?:(>=?) (\S+)|in ([\[(])(\S+), (\S+)([\])]))(?: or null)?")


def _within(value: Any, rule: str) -> bool:
    if value is None:
        return rule.endswith(" or null")
    if isinstance(value, tuple):
        return all(_within(v, rule) for v in value)
    parts = _BOUND.fullmatch(rule)
    if parts[1]:
        return value >= float(parts[2]) if parts[1] == ">=" else value > float(parts[2])
    low, high = float(parts[4]), float(parts[5])
    return (low <= value if parts[3] == "[" else low < value) and (value <= high if parts[6] == "]" else value < high)


def _bad(key: str, what: str, value: Any) -> TrainConfigError:
    return TrainConfigError(f"{key}: must be {what}, got {shorten(value)}")


class _Section:
    """Checks every field's ``option`` / ``bound`` rule on construction; ``key`` names the section in messages."""

    key: ClassVar[str]

    def __post_init__(self) -> None:
        for entry in dataclasses.fields(self):  # type: ignore[arg-type]
            value, key = getattr(self, entry.name), f"{self.key}.{entry.name}"
            choices = entry.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise TrainConfigError(f"{key}: {shorten(value)} is not one of {', '.join(choices)}")
            if "bound" in entry.metadata and not _within(value, entry.metadata["bound"]):
                raise _bad(key, entry.metadata["bound"], value)
            if entry.metadata.get("limit") is not None and value is not None:
                bounds.check(value, entry.metadata["limit"], key, TrainConfigError)


# ---------------------------------------------------------------------------- sections
@dataclass
class RecipeInfo(_Section):
    """What a shipped recipe promises (free text; printed at the start of a run, not used by training)."""

    key: ClassVar[str] = "recipe"
    description: str = "the embedded default: a small CvT on scikit-learn's 8x8 digits, fixed 20% held-out split"
    command: str = "cvt train"
    hardware: str = "2 CPU cores"
    time: str = "about 2.5 minutes (2 of training)"
    expected: str = ">= 99.0% held-out top-1, above SVC (RBF) on the same split (about 98.3%)"


@dataclass
class ModelSection(_Section):
    key: ClassVar[str] = "model"
    name: str | None = "cvt-digits"  # architecture / checkpoint name (cvt list)
    spec: dict[str, Any] | None = None  # a full CvTConfig as a mapping (stages: [...]) instead of a name
    weights: str | None = None  # start from these weights (fine-tuning: a new head if the class count differs)
    activation: str | None = option(None, ACTIVATIONS)  # quick_gelu (official) | gelu; default: the architecture's
    drop_path_rate: float | None = bound(None, "in [0, 1) or null")  # the LAST stage's (the one the paper varies)
    pretrained: bool = False  # download the released checkpoint `name` from the HF hub

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.name is None) == (self.spec is None):
            raise TrainConfigError(
                "model: give exactly one of model.name (an architecture) or model.spec (a CvTConfig)"
            )
        if self.name is not None and self.name.lower() not in list_models():
            raise TrainConfigError(f"model.name: unknown model {self.name!r} (valid: {', '.join(list_models())})")
        if self.pretrained and (self.name is None or get_checkpoint(self.name) is None):
            raise TrainConfigError(f"model.pretrained: {self.name!r} is an architecture, not a released checkpoint")
        if self.pretrained and self.weights:
            raise TrainConfigError("model: give model.weights or model.pretrained, not both")


@dataclass
class DataSection(_Section):
    key: ClassVar[str] = "data"
    kind: str = option("digits", DATA_KINDS)  # digits | folder (ROOT/train/<class>/*, ROOT/val/<class>/*) | list
    root: str | None = None  # folder: the directory holding train/ and val/
    train: str | None = None  # list: CSV (path,label) or JSON file for training
    val: str | None = None  # list: the validation file
    img_size: int = bound(32, ">= 8", bounds.IMG_SIZE)  # training and evaluation resolution
    batch_size: int = bound(64, ">= 1", bounds.BATCH_SIZE)  # GLOBAL batch per optimizer step (all processes, steps)
    eval_batch_size: int = bound(256, ">= 1", bounds.BATCH_SIZE)  # per process
    # DataLoader worker processes per training process (PIL decoding runs there); at most 4 x the CPU count
    workers: int = bound(1, ">= 0", bounds.workers_limit())
    # Evaluation geometry: < 1 resizes the short side to img_size / crop_pct and centre-crops; 1 squashes.
    # 0.875 below 384 is what `cvt predict` assumes for a model of that size (the released checkpoints' rule).
    crop_pct: float = bound(0.875, "in (0, 1]")
    interpolation: str = option("bicubic", INTERPOLATIONS)
    mean: tuple[float, float, float] | None = None  # null: ImageNet's (0.485, 0.456, 0.406)
    std: tuple[float, float, float] | None = bound(None, "> 0 or null")  # null: ImageNet's (0.229, 0.224, 0.225)
    val_fraction: float = bound(0.2, "in (0, 1)")  # digits: stratified held-out fraction (fixed by split_seed)
    split_seed: int = 0
    max_train_samples: int | None = bound(None, ">= 1 or null")  # quick runs: the first N after a seeded shuffle
    max_val_samples: int | None = bound(None, ">= 1 or null")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "folder" and not self.root:
            raise TrainConfigError("data.root: required with data.kind: folder (a directory holding train/ and val/)")
        if self.kind == "list" and not (self.train and self.val):
            raise TrainConfigError("data.train / data.val: both required with data.kind: list (CSV or JSON files)")


@dataclass
class AugmentSection(_Section):
    key: ClassVar[str] = "augment"
    random_resized_crop: bool = True  # else: resize (squash) to img_size
    scale: tuple[float, float] = bound((0.85, 1.0), "in (0, 1]")  # RandomResizedCrop area fraction, min <= max
    ratio: tuple[float, float] = bound((0.9, 1.1111), "> 0")  # RandomResizedCrop aspect ratio, min <= max
    translate: float = bound(0.1, "in [0, 0.5)")  # random shift, a fraction of img_size each way (0: off)
    hflip: float = bound(0.0, "in [0, 1]")  # digits are not mirror-symmetric; ImageNet recipes use 0.5
    color_jitter: float = bound(0.0, ">= 0")  # brightness/contrast/saturation; skipped with randaugment (timm)
    randaugment: str | None = None  # timm's spelling, e.g. "rand-m9-mstd0.5-inc1" (see RandAugment)
    random_erasing: float = bound(0.0, "in [0, 1]")  # probability (pixel mode, one box)
    mixup: float = bound(0.0, ">= 0")  # Beta(alpha, alpha); 0 = off
    cutmix: float = bound(0.0, ">= 0")  # Beta(alpha, alpha); 0 = off
    mix_prob: float = bound(1.0, "in [0, 1]")  # probability that a batch is mixed at all
    switch_prob: float = bound(0.5, "in [0, 1]")  # with both on: probability of cutmix instead of mixup
    label_smoothing: float = bound(0.1, "in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("scale", "ratio"):
            if getattr(self, name)[0] > getattr(self, name)[1]:
                raise _bad(f"augment.{name}", "[min, max] with min <= max", list(getattr(self, name)))
        if self.randaugment is not None:
            try:
                RandAugment.from_string(self.randaugment)
            except ValueError as e:
                raise TrainConfigError(f"augment.randaugment: {e}") from None


@dataclass
class OptimSection(_Section):
    key: ClassVar[str] = "optim"
    name: str = option("adamw", OPTIMIZERS)
    lr: float = bound(2.0e-3, "> 0")  # at a global batch of lr_batch; scaled linearly to data.batch_size
    lr_batch: int = bound(64, ">= 1")
    weight_decay: float = bound(0.05, ">= 0")  # never on norms, biases and the cls token
    momentum: float = bound(0.9, "in [0, 1)")  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = bound((0.9, 0.999), "in [0, 1)")  # adamw only
    eps: float = bound(1.0e-8, "> 0")
    clip_grad: float | None = bound(None, "> 0 or null")  # max global L2 norm of the gradients
    accum_steps: int = bound(1, ">= 1")  # micro-batches per optimizer step (data.batch_size is split across them)


@dataclass
class ScheduleSection(_Section):
    key: ClassVar[str] = "schedule"
    epochs: int = bound(40, ">= 1")
    warmup_epochs: float = 2.0  # linear warm-up from warmup_lr, per step; shorter than the run
    warmup_lr: float = bound(1.0e-6, ">= 0")
    min_lr: float = bound(1.0e-5, ">= 0")  # cosine floor

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.warmup_epochs < self.epochs:
            raise _bad("schedule.warmup_epochs", f"in [0, epochs={self.epochs})", self.warmup_epochs)


@dataclass
class RunSection(_Section):
    key: ClassVar[str] = "run"
    seed: int = 0
    device: str = option("auto", DEVICES)  # auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)
    amp: str = option("auto", AMP_MODES)  # auto: bf16 (or fp16 + GradScaler) on CUDA, fp32 on CPU | off | fp16 | bf16
    # torch intra-op threads per process (CPU; null: torch's choice). The digits default uses 1: its small
    # matrices gain little from a second thread, and one thread cannot stall on a busy machine (two threads
    # spin-waiting on a shared core made steps 50x slower here).
    threads: int | None = bound(1, ">= 1 or null", bounds.THREADS)
    ema: float | None = bound(None, "in (0, 1) or null")  # EMA decay (e.g. 0.9998): evaluated and exported instead
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    sync_bn: bool = False  # DDP on CUDA: SyncBatchNorm, so BN statistics span the global batch
    checkpoint_every_steps: int = bound(0, ">= 0")  # also checkpoint mid-epoch (0: at epoch ends only)
    eval_every: int = bound(1, ">= 1")  # epochs between validations (the last epoch is always validated)
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

    def __post_init__(self) -> None:
        if self.data.batch_size % self.optim.accum_steps:
            raise TrainConfigError(
                f"optim.accum_steps: {self.optim.accum_steps} does not divide data.batch_size {self.data.batch_size} "
                "(the global batch is split into accum_steps micro-batches)"
            )
        if self.augment.randaugment is not None and self.data.interpolation == "lanczos":
            raise TrainConfigError(
                "data.interpolation: lanczos cannot drive augment.randaugment's rotations and shears (PIL's affine "
                "transforms take nearest, bilinear or bicubic); use bicubic, or no randaugment"
            )
        self.resolve_model_config(num_classes=2)  # the architecture itself is valid at this img_size

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (lists for tuples): YAML / JSON / ``torch.load(weights_only=True)`` safe."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """Block-style sections, one key per line, short lists inline (what a person edits)."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> TrainConfig:
        return _parse(cls, plain, "")

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)

    def scaled_lr(self) -> float:
        """``optim.lr`` scaled linearly from ``optim.lr_batch`` to the global ``data.batch_size``."""
        return self.optim.lr * self.data.batch_size / self.optim.lr_batch

    def resolve_model_config(self, num_classes: int) -> CvTConfig:
        """The architecture this recipe trains, with ``num_classes`` and the data's ``img_size``."""
        model = self.model  # its name is a known one (ModelSection checks it)
        if model.spec is None:
            base = get_config(str(model.name))
        else:
            try:
                base = CvTConfig.from_dict(model.spec)
            except ConfigError as e:
                raise TrainConfigError(f"model.spec.{e}") from None
        changes: dict[str, Any] = {"num_classes": num_classes, "img_size": self.data.img_size}
        if model.activation is not None:
            changes["activation"] = model.activation
        if model.drop_path_rate is not None:
            last = dataclasses.replace(base.stages[-1], drop_path_rate=model.drop_path_rate)
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


# ---------------------------------------------------------------------------- mapping -> typed dataclasses
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _parse(annotation: Any, value: Any, key: str) -> Any:
    """``value`` (as YAML spells it) as the type ``annotation``; raises :class:`TrainConfigError` naming ``key``."""
    if dataclasses.is_dataclass(annotation):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise TrainConfigError(
                f"{key or 'config'}: expected a mapping, got {type(value).__name__} {shorten(value)}"
            )
        names = [f.name for f in dataclasses.fields(annotation)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise TrainConfigError(f"{key + '.' if key else ''}{unknown[0]}: unknown key (valid: {', '.join(names)})")
        hints = typing.get_type_hints(annotation)
        return annotation(**{k: _parse(hints[k], v, f"{key + '.' if key else ''}{k}") for k, v in value.items()})
    origin, args = typing.get_origin(annotation) or annotation, typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # `X | None`, the only unions in the sections
        return None if value is None else _parse(args[0], value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TrainConfigError(
                f"{key}: expected a list of {len(args)} values, got {type(value).__name__} {shorten(value)}"
            )
        return tuple(_parse(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            value, number = float(value), True
    if origin is float and number:
        if math.isfinite(value):
            return float(value)
        raise TrainConfigError(f"{key}: expected a finite number, got {shorten(value)}")
    if origin is int and number and (isinstance(value, int) or value.is_integer()):
        return int(value)  # 3.0 -> 3
    if origin is str and (number or isinstance(value, str)):
        return str(value)  # a numeric path component stays a path
    if origin is bool and isinstance(value, bool):
        return value
    if origin is dict and isinstance(value, Mapping):
        return dict(value)
    raise TrainConfigError(f"{key}: expected {_EXPECTED[origin]}, got {type(value).__name__} {shorten(value)}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- loading
class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the document's size bounded as its aliases expand (:mod:`cvt.core.bounds`).

    Composing a document shares an aliased node instead of copying it, so a 348-byte recipe of nine aliases nine
    deep composes instantly into 9^9 leaves that everything after (type checks, copies, an error message's repr)
    walks in full. The nodes are counted as if expanded, memoised per shared node, before anything is constructed.
    """

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, bounds.YAML_NODES.maximum, self.name)
        return node


def _expanded_size(node: yaml.Node, seen: dict[int, int], limit: float, source: str) -> int:
    """Nodes under ``node`` with every alias expanded (``seen``: sizes of shared nodes); refused past ``limit``."""
    if id(node) in seen:
        return seen[id(node)]
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, seen, limit, source) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(
            _expanded_size(k, seen, limit, source) + _expanded_size(v, seen, limit, source) for k, v in node.value
        )
    if size > limit:
        raise TrainConfigError(
            f"{source}: expands to more than {int(limit)} YAML nodes (aliases?); {bounds.YAML_NODES.reason}"
        )
    seen[id(node)] = size
    return size


def load_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` with alias expansion and nesting bounded; one :class:`TrainConfigError` line
    naming ``source`` (a file, ``--set KEY``) for anything that is not a bounded YAML document."""
    if len(text) > bounds.DOCUMENT_BYTES.maximum:
        raise TrainConfigError(f"{source}: {len(text)} characters ({bounds.DOCUMENT_BYTES.reason})")
    loader = _BoundedLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{source}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise TrainConfigError(f"{source}: not a usable recipe (YAML nested too deeply)") from None
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Any:
    """A recipe file through :func:`load_yaml_text` (refused unread when larger than a recipe can be)."""
    try:
        size = path.stat().st_size
        if size > bounds.DOCUMENT_BYTES.maximum:
            raise TrainConfigError(f"{path}: {size} bytes ({bounds.DOCUMENT_BYTES.reason})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainConfigError(f"{path}: unreadable ({first_line(e)})") from None
    return load_yaml_text(text, str(path))


def load_config(
    source: str | Path | Mapping[str, Any] | TrainConfig | None = None,
    overrides: Sequence[str] = (),
    *,
    echo: Callable[[str], None] | None = None,
) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML path, a mapping, a config or ``None`` (the default).

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML (``1e-3``, ``[0.5, 1.0]``,
    ``null``, ``true``). A run no longer than the default warm-up (``--set schedule.epochs=2``) that does not
    set ``schedule.warmup_epochs`` warms up for half its length instead; ``echo`` gets that notice.
    """
    if isinstance(source, TrainConfig):
        plain = source.to_dict()
    elif source is None:
        plain = {}
    elif isinstance(source, Mapping):
        plain = _plain(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise TrainConfigError(f"--config: {path}: no such file")
        plain = load_yaml(path) or {}
        if not isinstance(plain, dict):
            raise TrainConfigError(f"{path}: expected a mapping of sections, got {type(plain).__name__}")
    for item in overrides:
        apply_override(plain, item)
    schedule = plain.get("schedule")
    epochs = schedule.get("epochs") if isinstance(schedule, dict) else None
    default = ScheduleSection.warmup_epochs
    if type(epochs) is int and 1 <= epochs <= default and "warmup_epochs" not in schedule:
        schedule["warmup_epochs"] = epochs / 2
        if echo is not None:
            echo(f"note: schedule.warmup_epochs: {epochs / 2:g} (half the run) instead of the default {default:g}")
    return TrainConfig.from_dict(plain)


def apply_override(plain: dict[str, Any], item: str) -> None:
    """Set ``plain[a][b] = value`` for ``"a.b=value"`` (in place; ``plain``: a recipe as plain mappings)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = load_yaml_text(text, f"--set {key}") if text.strip() else None
    except TrainConfigError:
        value = text
    parts = key.split(".")
    node = plain
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TrainConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
        node = child
    node[parts[-1]] = value


def validate(cfg: TrainConfig, check_paths: bool = False) -> None:
    """Check ``cfg`` again (after changes in place); ``check_paths``: the files and folders it names exist too."""
    TrainConfig.from_dict(cfg.to_dict())
    if not check_paths:
        return
    data = cfg.data
    weights = cfg.model.weights  # a hub id (hf://owner/repo) is resolved, downloaded or refused, by the core's rule
    if weights is not None and not is_hub_id(weights) and not Path(weights).expanduser().exists():
        raise TrainConfigError(f"model.weights: {cfg.model.weights}: no such file or directory")
    if data.kind == "folder":
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise TrainConfigError(f"data.root: {root} is not a directory")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise TrainConfigError(
                    f"data.root: {root} has no {split}/ folder (expected {root}/train/<class>/... and "
                    f"{root}/val/<class>/...)"
                )
    elif data.kind == "list":
        for name in ("train", "val"):
            path = Path(str(getattr(data, name))).expanduser()
            if not path.is_file():
                raise TrainConfigError(f"data.{name}: {path}: no such file")


def default_out_dir(cfg: TrainConfig, config_path: str | Path | None = None) -> Path:
    """``run.out`` or ``runs/<recipe file stem>`` (``runs/digits`` for the embedded default)."""
    if cfg.run.out:
        return Path(cfg.run.out).expanduser()
    stem = Path(config_path).stem if config_path else "digits"
    return Path("runs") / stem

"""``setup(cfg) -> Trainer``: everything a run is made of, built in one pass; and :class:`TrainState`, where it is.

:func:`setup` only constructs (the run directory check, data sources and transforms, the model, optimizer,
``GradScaler``, EMA, sampler, LR schedule and loaders) and reports every problem with the recipe, the run
directory or the data before a model exists. ``setup(..., dry_run=True)`` is the dry run: the very same
steps (the model built and its weights loaded too), only the run directory is left as it is (no file removed
or written). What then happens to the pieces is :func:`cvt.train.loop.train_one_epoch` and :func:`cvt.train.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.errors import CvtError, UsageError, WriteError
from ..core.files import RUN_DIR, RUN_HEADER, TEMP_MARK, check_writable, remove_stale_temps
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, PretrainedSpec
from ..data.augment import MixupCutmix, TrainTransform
from ..data.datasets import EvalSet, TrainSet, collate
from ..data.sources import DataBundle, build_sources
from ..data.transforms import build_eval_transform
from ..torch.factory import create_model
from ..torch.runtime import resolve_device
from . import distributed
from .checkpoint import FORMAT, find_last
from .config import DataSection, TrainConfig, TrainConfigError, validate
from .distributed import DistInfo
from .ema import ModelEma
from .optim import build_optimizer, lr_at
from .sampler import EpochBatchSampler, ShardSampler

log = logging.getLogger(__name__)

# What a run writes in its directory (--overwrite removes them and the tensorboard/ folder).
OWNED_FILES = (
    "config.yaml",
    "last.pt",
    "best.pt",
    "best.safetensors",
    "final.safetensors",
    "metrics.jsonl",
    "summary.json",
    "learning_curve.png",
)


# The keys of summary.json (a summary.json with any other key is not a run's).
SUMMARY_KEYS = frozenset(
    [
        "best_val_top1",
        "best_epoch",
        "final",
        "baseline",
        "train_seconds",
        "skipped_images",
        "skipped_files",
        "classes",
        "model",
        "parameters",
        "processes",
    ]
)
_PROBE_BYTES = 64 << 20  # a run's metrics.jsonl / checkpoint pickle is far smaller; larger is not ours


def is_run_file(path: Path) -> bool:
    """Whether ``path`` (a name of :data:`OWNED_FILES`, or ``tensorboard``) holds what a run writes there.

    The content decides, so ``--overwrite`` removes only a run's own files: ``config.yaml`` starts with the
    run's header (:data:`cvt.core.files.RUN_HEADER`), ``metrics.jsonl`` is JSON objects with an ``epoch``,
    ``summary.json`` an object with the summary's keys only, ``*.pt`` a cvt-torch training checkpoint, a
    ``.safetensors`` our native file, the plot a Matplotlib PNG, ``tensorboard/`` event files only.
    """
    name = path.name
    try:
        if path.is_symlink() or (path.is_file() and path.stat().st_size > _PROBE_BYTES * 64):
            return False
        if name == "tensorboard":
            return path.is_dir() and all(p.name.startswith("events.out.tfevents.") for p in path.iterdir())
        if not path.is_file():
            return False
        if name == "config.yaml":
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.readline(200).startswith(RUN_HEADER)
        if name == "metrics.jsonl":
            rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            return all(isinstance(r, dict) and "epoch" in r for r in rows)
        if name == "summary.json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(doc, dict) and set(doc) <= SUMMARY_KEYS
        if name.endswith(".pt"):
            with zipfile.ZipFile(path) as z:
                pkl = [i for i in z.infolist() if i.filename.endswith("data.pkl") and i.file_size < _PROBE_BYTES]
                return any(FORMAT.encode() in z.read(i) for i in pkl)
        if name.endswith(".safetensors"):
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                head = json.loads(f.read(n)) if 0 < n < _PROBE_BYTES else {}
            return isinstance(head, dict) and (head.get("__metadata__") or {}).get("format_tag") == "cvt-torch"
        if name.endswith(".png"):
            with open(path, "rb") as f:
                head = f.read(4096)
            return head.startswith(b"\x89PNG") and b"Matplotlib" in head
    except (OSError, ValueError, RecursionError, zipfile.BadZipFile, AttributeError):
        return False
    return False


class TrainError(CvtError, RuntimeError):
    """A run that cannot start or go on (existing run directory, mismatched checkpoint): one line."""


@dataclass
class EpochStats:
    """What one epoch measured, summed over processes (checkpointed mid-epoch, so a resumed epoch reports the same)."""

    loss: float = 0.0  # sum of per-sample losses
    correct: float = 0.0  # argmax == original label (on augmented, possibly mixed, images)
    images: float = 0.0
    skipped: float = 0.0  # distinct unreadable files met (a file is counted once, however often it was met)
    seconds: float = 0.0
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> "path: reason", every process's

    def add(self, loss: float, correct: float, images: float, seconds: float) -> None:
        """Count one more optimizer step."""
        self.loss, self.correct, self.images = self.loss + loss, self.correct + correct, self.images + images
        self.seconds += seconds

    def add_skipped(self, files: Iterable[tuple[str, str]]) -> None:
        """Note unreadable files (``(path, message)`` pairs); one met again is not counted again."""
        for name, message in files:
            self.skipped_files.setdefault(name, message)
        self.skipped = float(len(self.skipped_files))

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "skipped_files": {**self.skipped_files},
        }


@dataclass
class TrainState:
    """Where a run is: ``epoch`` epochs done plus ``step_in_epoch`` optimizer steps of the next (checkpointed)."""

    epoch: int = 0
    step: int = 0  # global optimizer steps: drives the LR schedule and the per-step seeds
    step_in_epoch: int = 0
    sums: EpochStats = field(default_factory=EpochStats)  # of the epoch in progress
    best: float | None = None  # best validation top-1 so far
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (metrics.jsonl)
    skipped_total: int = 0  # distinct unreadable files over the run
    train_seconds: float = 0.0
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> "path: reason", over the run

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (a checkpoint loads with ``weights_only=True``)."""
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "sums": self.sums.to_dict(),
            "history": [dict(h) for h in self.history],
            "skipped_files": {**self.skipped_files},
        }

    @classmethod
    def from_dict(cls, plain: dict[str, Any]) -> TrainState:
        sums, history = EpochStats(**plain["sums"]), [dict(record) for record in plain["history"]]
        return cls(**{**plain, "sums": sums, "history": history})

    def end_epoch(self, record: dict[str, Any], stats: EpochStats) -> TrainState:
        """The state after the epoch ``record`` describes (``record["val_top1"]`` may make it the best)."""
        top1 = record.get("val_top1")
        better = top1 is not None and (self.best is None or top1 > self.best)
        new = {k: v for k, v in stats.skipped_files.items() if k not in self.skipped_files}
        return TrainState(
            epoch=self.epoch + 1,
            step=record["step"],
            best=top1 if better else self.best,
            best_epoch=record["epoch"] if better else self.best_epoch,
            history=[*self.history, record],
            skipped_total=self.skipped_total + len(new),  # files of earlier epochs are not counted again
            train_seconds=self.train_seconds + stats.seconds,
            skipped_files={**self.skipped_files, **new},
        )


@dataclass
class Trainer:
    """The pieces of one run (see :func:`setup`; a dry run's are the same, built and never run).

    Every field without a default is always built; the ``None`` of the others means something (below).
    """

    cfg: TrainConfig
    out: Path
    dist: DistInfo
    device: torch.device
    data: DataBundle  # training and validation sources, class names
    spec: PretrainedSpec  # evaluation preprocessing and class names, written into the exported weights
    model_config: CvTConfig | None  # the architecture (None: a custom `model=` without a CvTConfig)
    sampler: EpochBatchSampler
    lr: Callable[[int], float]  # the schedule: lr_at with this run's numbers
    echo: Callable[[str], None]  # progress lines (silent on ranks other than 0)
    model: nn.Module  # the plain module: state dicts, EMA, exported weights
    wrapped: nn.Module  # what runs forward: `model`, maybe DDP- and/or torch.compile-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only: otherwise every call is a no-op
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    resume_from: Path | None = None  # OUT/last.pt when resuming; None: a fresh start
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    ema: ModelEma | None = None  # None: run.ema is off
    mixup: MixupCutmix | None = None  # None: neither mixup nor cutmix

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and exported: the EMA weights when there are, else the model."""
        return self.ema.module if self.ema is not None else self.model


def setup(
    cfg: TrainConfig,
    *,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    model: nn.Module | None = None,
    echo: Callable[[str], None] = print,
    dry_run: bool = False,
) -> Trainer:
    """Build a run from ``cfg`` (see :func:`cvt.train.fit` for the arguments), reporting problems cheapest first.

    Under torchrun this joins the process group (leave it with :func:`cvt.train.distributed.cleanup`).
    Checks, in order: the recipe and the paths it names; ``out`` (a directory this process can write, holding
    no other run's files unless ``resume`` / ``overwrite``); packages and device; the data (scanned, at least
    one readable image, each class's checked); the model (built, weights loaded), optimizer, AMP, EMA and
    loaders. Only then, unless ``dry_run``, does it touch ``out``: ``overwrite`` removes the earlier run's
    files, ``resume`` the temporary files of an interrupted write. Raises :class:`TrainConfigError`,
    :class:`~cvt.core.errors.DataError`, :class:`~cvt.core.errors.WriteError` or :class:`TrainError` (one line).
    """
    out = Path(out)
    validate(cfg, check_paths=True)
    leftovers = check_out(out, resume=resume, overwrite=overwrite)
    if cfg.run.tensorboard:
        tensorboard_writer()
    try:
        info, device = distributed.init(resolve_device(cfg.run.device))
    except UsageError as e:
        raise TrainConfigError(f"run.device: {e}") from None
    echo = echo if info.is_main else _silent
    warn = _log_warning if info.is_main else _silent
    recipe_data, augment, run = cfg.data, cfg.augment, cfg.run
    data = _sources(recipe_data, warn)
    preprocess = EvalPreprocess(
        img_size=recipe_data.img_size,
        crop_pct=recipe_data.crop_pct,
        interpolation=recipe_data.interpolation,
        mean=tuple(recipe_data.mean or IMAGENET_MEAN),
        std=tuple(recipe_data.std or IMAGENET_STD),
    )
    spec = PretrainedSpec(preprocess, tuple(data.classes), source="cvt train")
    num_classes = len(data.classes)
    model_config = cfg.resolve_model_config(num_classes) if model is None else _config_of(model, num_classes)
    sampler = EpochBatchSampler(
        len(data.train),
        recipe_data.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        accum_steps=cfg.optim.accum_steps,
        seed=run.seed,
    )
    resume_from = find_last(out) if resume else None
    module = _placed(model if model is not None else _build_model(cfg, model_config, echo), cfg, info, device, echo)
    if model_config is not None:
        module.config, module.pretrained_cfg = model_config, spec
    optimizer = _optimizer(module, cfg)
    amp_dtype = _amp_dtype(run.amp, device)
    ema = ModelEma(module, run.ema) if run.ema else None
    mixup = MixupCutmix(
        num_classes, augment.mixup, augment.cutmix, augment.mix_prob, augment.switch_prob, augment.label_smoothing
    )
    train_loader, val_loader = _loaders(cfg, data, preprocess, sampler, info, device)
    trainer = Trainer(
        cfg=cfg,
        out=out,
        dist=info,
        device=device,
        data=data,
        spec=spec,
        model_config=model_config,
        sampler=sampler,
        lr=_schedule(cfg, sampler.steps_per_epoch),
        echo=echo,
        model=module,
        wrapped=_wrapped(module, cfg, info, device),
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        train_loader=train_loader,
        val_loader=val_loader,
        resume_from=resume_from,
        amp_dtype=amp_dtype,
        ema=ema,
        mixup=mixup if mixup.enabled else None,
    )
    if not dry_run:  # every check passed: only now may an earlier run's files go
        _clear_out(out, leftovers, resume_from, info, echo)
    return trainer


def _silent(_line: str) -> None:
    pass


def _log_warning(line: str) -> None:
    """A warning about the data (``warning: ...``) through :mod:`logging` (logger ``cvt.train``): callers can
    silence or route it; with no logging configured Python still prints it on stderr, and ``cvt train`` shows it."""
    log.warning(line)


def tensorboard_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainConfigError("run.tensorboard: needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


def _sources(section: DataSection, warn: Callable[[str], None]) -> DataBundle:
    """The recipe's training and validation images (every problem with them is reported here, before a model)."""
    data = build_sources(
        section.kind,
        root=section.root,
        train_list=section.train,
        val_list=section.val,
        val_fraction=section.val_fraction,
        split_seed=section.split_seed,
        max_train=section.max_train_samples,
        max_val=section.max_val_samples,
        warn=warn,
    )
    if len(data.train) < section.batch_size:
        raise TrainConfigError(
            f"data.batch_size: {section.batch_size} is larger than the training set ({len(data.train)} images)"
        )
    # Here, in this process: a file no worker can read fails in a DataLoader worker, mid-epoch, otherwise.
    data.check_readable(warn)
    return data


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """:func:`lr_at` with this run's numbers: ``step -> learning rate``."""
    schedule = cfg.schedule
    return functools.partial(
        lr_at,
        total_steps=schedule.epochs * steps_per_epoch,
        warmup_steps=round(schedule.warmup_epochs * steps_per_epoch),
        base_lr=cfg.scaled_lr(),
        warmup_lr=schedule.warmup_lr,
        min_lr=schedule.min_lr,
    )


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    optim = cfg.optim
    return build_optimizer(
        model,
        optim.name,
        cfg.scaled_lr(),
        weight_decay=optim.weight_decay,
        betas=optim.betas,
        eps=optim.eps,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
    )


def _train_transform(cfg: TrainConfig) -> TrainTransform:
    """PIL image + generator -> the augmented, normalised ``(3, img_size, img_size)`` tensor."""
    data, augment = cfg.data, cfg.augment
    return TrainTransform(
        data.img_size,
        data.mean or IMAGENET_MEAN,
        data.std or IMAGENET_STD,
        random_resized_crop=augment.random_resized_crop,
        scale=augment.scale,
        ratio=augment.ratio,
        translate=augment.translate,
        hflip=augment.hflip,
        color_jitter=augment.color_jitter,
        randaugment=augment.randaugment,
        random_erasing=augment.random_erasing,
        interpolation=data.interpolation,
    )


def _loaders(
    cfg: TrainConfig,
    data: DataBundle,
    preprocess: EvalPreprocess,
    sampler: EpochBatchSampler,
    info: DistInfo,
    device: torch.device,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Training batches (augmented, as ``sampler`` says) and this process's shard of the validation images."""
    train = TrainSet(data.train, _train_transform(cfg), cfg.run.seed)
    val = EvalSet(data.val, build_eval_transform(preprocess))
    val_sampler = ShardSampler(len(data.val), info.rank, info.world_size)
    workers = cfg.data.workers

    def loader(dataset: torch.utils.data.Dataset, **sampling: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.run.seed),
            **sampling,
        )  # its own generator: the global one stays untouched

    return loader(train, batch_sampler=sampler), loader(val, batch_size=cfg.data.eval_batch_size, sampler=val_sampler)


def _placed(
    model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device, echo: Callable[[str], None]
) -> nn.Module:
    """``model`` on ``device`` in training mode (channels-last and SyncBatchNorm as the recipe says)."""
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    if cfg.run.sync_bn and info.enabled:
        if device.type != "cuda":
            echo("run.sync_bn: SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.train()


def _wrapped(model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device) -> nn.Module:
    """What runs forward: ``model`` under DDP (several processes) and/or ``torch.compile`` (``run.compile``)."""
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.run.compile else model


def _config_of(model: nn.Module, num_classes: int) -> CvTConfig | None:
    """A given module's architecture, with the data's class count (None: not a CvT with a CvTConfig)."""
    config = getattr(model, "config", None)
    return config.replace(num_classes=num_classes) if isinstance(config, CvTConfig) else None


def check_out(out: Path, *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Refuse, before any data or model, a run directory this run cannot use; returns what another run left in it.

    ``out`` must be a directory (or not exist yet) whose files this process can write. Files of another run
    (:data:`OWNED_FILES`, ``tensorboard/``, temporary files of an interrupted write) refuse a fresh start:
    a stale ``metrics.jsonl`` or ``summary.json`` would otherwise be mixed with, or mistaken for, this run's.
    Nothing is written or removed here.
    """
    if out.exists() and not out.is_dir():
        raise WriteError(f"{out}: not a directory (--out names the run directory)")
    above = next((p for p in out.parents if p.exists()), None)
    if not out.exists() and above is not None and not above.is_dir():
        raise WriteError(f"{out}: cannot create the run directory ({above} is not a directory)")
    for name in OWNED_FILES:  # the directory, or the nearest existing parent, accepts new files; none is a folder
        check_writable(out / name)
    if not out.is_dir():
        return []
    leftovers = [name for name in OWNED_FILES if (out / name).exists()]
    leftovers += ["tensorboard/"] if (out / "tensorboard").is_dir() else []
    run = RUN_DIR.recognise(out)
    foreign = [n for n in leftovers if not (run or is_run_file(out / n.rstrip("/")))]
    if foreign:  # never removed, whatever the flags: --overwrite removes a run's own files only
        held = f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}"
        raise TrainError(
            f"{out}: holds {held} that cvt train did not write (a run's are recognised by their content); "
            "--overwrite removes only a run's own files: move them, or choose another --out"
        )
    leftovers += sorted(p.name for p in out.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name)
    if leftovers and not (resume or overwrite):
        held = f"{', '.join(leftovers[:5])}{' ...' if len(leftovers) > 5 else ''}"
        if find_last(out) is not None:
            raise TrainError(
                f"{out}: already holds a run ({held}): add --resume to continue it, --overwrite to start again, "
                "or choose another --out"
            )
        raise TrainError(
            f"{out}: holds files of an earlier run but no checkpoint to continue ({held}): add --overwrite to "
            "start again, or choose another --out"
        )
    return leftovers


def _clear_out(
    out: Path, leftovers: list[str], resume_from: Path | None, info: DistInfo, echo: Callable[[str], None]
) -> None:
    """Make ``out`` ready for writing: a fresh start (``--overwrite``, or ``--resume`` with no checkpoint to continue)
    removes the earlier run's files; a resumed run keeps them (its metrics are rewritten from the checkpoint) but
    loses the temporary files of an interrupted write."""
    if info.is_main and leftovers:
        if resume_from is not None:
            stale = remove_stale_temps(out)
            if stale:
                names = ", ".join(p.name for p in stale)
                echo(f"removed {len(stale)} temporary file(s) of an interrupted write: {names}")
        else:
            for name in leftovers:
                if name == "tensorboard/":
                    shutil.rmtree(out / "tensorboard", ignore_errors=True)
                else:
                    (out / name).unlink(missing_ok=True)
            echo(f"removed the earlier run's files from {out}: {', '.join(leftovers)}")
    distributed.barrier(info)


def _build_model(cfg: TrainConfig, config: CvTConfig, echo: Callable[[str], None]) -> nn.Module:
    """The recipe's model: from ``model.weights`` / the released checkpoint, else initialised from ``run.seed``."""
    if cfg.model.weights is not None or cfg.model.pretrained:
        weights, pretrained = cfg.model.weights, cfg.model.pretrained
        model = create_model(config, weights=weights, pretrained=pretrained, num_classes=config.num_classes)
        echo(f"initialised from {weights or config.name}: {model.load_report}")
        return model
    with torch.random.fork_rng(devices=[]):  # the same initial weights in every process; the global RNG untouched
        torch.default_generator.manual_seed(cfg.run.seed)
        return create_model(config)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.amp`` (None: fp32). ``auto``: bf16 (else fp16) on CUDA, fp32 on the CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None  # fp32 on CPU: bf16 autocast there is slower than fp32 for these shapes
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.bfloat16 if mode == "bf16" else torch.float16

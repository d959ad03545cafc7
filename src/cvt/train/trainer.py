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
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.errors import CvtError, UsageError, WriteError
from ..core.files import TEMP_MARK, check_writable, remove_stale_temps
from ..core.hub import download_checkpoint
from ..core.presets import get_checkpoint
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, PretrainedSpec
from ..data.augment import MixupCutmix, TrainTransform
from ..data.datasets import DataBundle, EvalSet, TrainSet, build_sources, collate
from ..data.transforms import build_eval_transform
from ..torch.factory import create_model
from ..torch.runtime import resolve_device
from . import checkpoint as ckpt
from . import distributed
from .config import DataSection, TrainConfig, TrainConfigError, validate
from .distributed import DistInfo
from .ema import ModelEma
from .optim import build_optimizer, lr_at
from .sampler import EpochBatchSampler, ShardSampler

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
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{**d, "sums": EpochStats(**d["sums"]), "history": [dict(h) for h in d["history"]]})

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
    """The pieces of one run (see :func:`setup`; a dry run's are the same, built and never run)."""

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
    resume_from: Path | None = None  # OUT/last.pt when resuming
    model: nn.Module | None = None  # the plain module: state dicts, EMA, exported weights
    forward: nn.Module | None = None  # what runs forward: `model`, maybe DDP- and/or torch.compile-wrapped
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None  # enabled for fp16 only: otherwise every call is a no-op
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    ema: ModelEma | None = None
    mixup: MixupCutmix | None = None
    train_loader: torch.utils.data.DataLoader | None = None
    val_loader: torch.utils.data.DataLoader | None = None

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
    warn = _stderr if info.is_main else _silent
    d, a, run = cfg.data, cfg.augment, cfg.run
    data = _sources(d, warn)
    mean, std = tuple(d.mean or IMAGENET_MEAN), tuple(d.std or IMAGENET_STD)
    pre = EvalPreprocess(img_size=d.img_size, crop_pct=d.crop_pct, interpolation=d.interpolation, mean=mean, std=std)
    spec = PretrainedSpec(pre, tuple(data.classes), source="cvt train")
    num_classes = len(data.classes)
    model_config = cfg.resolve_model_config(num_classes) if model is None else _config_of(model, num_classes)
    accum = cfg.optim.accum_steps
    sampler = EpochBatchSampler(
        len(data.train), d.batch_size, rank=info.rank, world_size=info.world_size, accum_steps=accum, seed=run.seed
    )
    lr = _schedule(cfg, sampler.steps_per_epoch)
    resume_from = ckpt.find_last(out) if resume else None
    raw = _placed(model if model is not None else _build_model(cfg, model_config, echo), cfg, info, device, echo)
    if model_config is not None:
        raw.config, raw.pretrained_cfg = model_config, spec
    optimizer = _optimizer(raw, cfg)
    amp_dtype = _amp_dtype(run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEma(raw, run.ema) if run.ema else None
    mixup = MixupCutmix(num_classes, a.mixup, a.cutmix, a.mix_prob, a.switch_prob, a.label_smoothing)
    train_loader, val_loader = _loaders(cfg, data, pre, sampler, info, device)
    if not dry_run:  # every check passed: only now may an earlier run's files go
        _clear_out(out, leftovers, resume_from, info, echo)
    return Trainer(
        cfg,
        out,
        info,
        device,
        data,
        spec,
        model_config,
        sampler,
        lr,
        echo,
        resume_from=resume_from,
        model=raw,
        forward=_wrapped(raw, cfg, info, device),
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=amp_dtype,
        ema=ema,
        mixup=mixup if mixup.enabled else None,
        train_loader=train_loader,
        val_loader=val_loader,
    )


def _silent(_line: str) -> None:
    pass


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def tensorboard_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainConfigError("run.tensorboard: needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


def _sources(d: DataSection, warn: Callable[[str], None]) -> DataBundle:
    """The recipe's training and validation images (every problem with them is reported here, before a model)."""
    data = build_sources(
        d.kind,
        root=d.root,
        train_list=d.train,
        val_list=d.val,
        val_fraction=d.val_fraction,
        split_seed=d.split_seed,
        max_train=d.max_train_samples,
        max_val=d.max_val_samples,
        warn=warn,
    )
    if len(data.train) < d.batch_size:
        raise TrainConfigError(
            f"data.batch_size: {d.batch_size} is larger than the training set ({len(data.train)} images)"
        )
    # Here, in this process: a file no worker can read fails in a DataLoader worker, mid-epoch, otherwise.
    data.check_readable(warn)
    return data


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """:func:`lr_at` with this run's numbers: ``step -> learning rate``."""
    s = cfg.schedule
    return functools.partial(
        lr_at,
        total_steps=s.epochs * steps_per_epoch,
        warmup_steps=round(s.warmup_epochs * steps_per_epoch),
        base_lr=cfg.scaled_lr(),
        warmup_lr=s.warmup_lr,
        min_lr=s.min_lr,
    )


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return build_optimizer(
        model,
        o.name,
        cfg.scaled_lr(),
        weight_decay=o.weight_decay,
        betas=o.betas,
        eps=o.eps,
        momentum=o.momentum,
        nesterov=o.nesterov,
    )


def _train_transform(cfg: TrainConfig) -> TrainTransform:
    """PIL image + generator -> the augmented, normalised ``(3, img_size, img_size)`` tensor."""
    d, a = cfg.data, cfg.augment
    return TrainTransform(
        d.img_size,
        d.mean or IMAGENET_MEAN,
        d.std or IMAGENET_STD,
        random_resized_crop=a.random_resized_crop,
        scale=a.scale,
        ratio=a.ratio,
        translate=a.translate,
        hflip=a.hflip,
        color_jitter=a.color_jitter,
        randaugment=a.randaugment,
        random_erasing=a.random_erasing,
        interpolation=d.interpolation,
    )


def _loaders(
    cfg: TrainConfig,
    data: DataBundle,
    pre: EvalPreprocess,
    sampler: EpochBatchSampler,
    info: DistInfo,
    device: torch.device,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Training batches (augmented, as ``sampler`` says) and this process's shard of the validation images."""
    train = TrainSet(data.train, _train_transform(cfg), cfg.run.seed)
    val = EvalSet(data.val, build_eval_transform(pre))
    val_sampler = ShardSampler(len(data.val), info.rank, info.world_size)
    workers = cfg.data.workers

    def loader(dataset: torch.utils.data.Dataset, **kw: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.run.seed),
            **kw,
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
    leftovers += sorted(p.name for p in out.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name)
    if leftovers and not (resume or overwrite):
        held = f"{', '.join(leftovers[:5])}{' ...' if len(leftovers) > 5 else ''}"
        if ckpt.find_last(out) is not None:
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
    weights = cfg.model.weights
    if cfg.model.pretrained:
        weights = download_checkpoint(get_checkpoint(str(cfg.model.name)))
    if weights is not None:
        model = create_model(config, weights=weights, num_classes=config.num_classes)
        echo(f"initialised from {weights}: {model.load_report}")
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

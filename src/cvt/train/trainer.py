"""``setup(cfg) -> Trainer``: everything a run is made of, built in one pass; and :class:`TrainState`, where it is.

:func:`setup` only constructs (data sources and transforms, the run directory check, the model, optimizer,
``GradScaler``, EMA, sampler, LR schedule and loaders) and reports every problem with the recipe or the data
before a model exists. ``setup(..., build_model=False)`` is the dry run: the same checks, no model, no file
touched. What then happens to the pieces is :func:`cvt.train.loop.train_one_epoch` and :func:`cvt.train.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.errors import CvtError, UsageError
from ..core.hub import download_checkpoint
from ..core.presets import get_checkpoint
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, PretrainedSpec
from ..data.augment import MixupCutmix, TrainTransform
from ..data.datasets import DataBundle, EvalSet, TrainSet, build_sources, collate
from ..data.transforms import build_eval_transform
from ..factory import create_model
from ..runtime import resolve_device
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
    skipped: float = 0.0  # unreadable images substituted
    seconds: float = 0.0
    skipped_files: list[str] = field(default_factory=list)  # the first few, this process (not checkpointed)

    def add(self, loss: float, correct: float, images: float, skipped: float, seconds: float) -> None:
        """Count one more optimizer step."""
        self.loss, self.correct, self.images = self.loss + loss, self.correct + correct, self.images + images
        self.skipped, self.seconds = self.skipped + skipped, self.seconds + seconds

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "skipped_files"}


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
    skipped_total: int = 0
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (a checkpoint loads with ``weights_only=True``)."""
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "sums": self.sums.to_dict(),
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{**d, "sums": EpochStats(**d["sums"]), "history": [dict(h) for h in d["history"]]})

    def end_epoch(self, record: dict[str, Any], stats: EpochStats) -> TrainState:
        """The state after the epoch ``record`` describes (``record["val_top1"]`` may make it the best)."""
        top1 = record.get("val_top1")
        better = top1 is not None and (self.best is None or top1 > self.best)
        return TrainState(
            epoch=self.epoch + 1,
            step=record["step"],
            best=top1 if better else self.best,
            best_epoch=record["epoch"] if better else self.best_epoch,
            history=[*self.history, record],
            skipped_total=self.skipped_total + int(stats.skipped),
            train_seconds=self.train_seconds + stats.seconds,
        )


@dataclass
class Trainer:
    """The pieces of one run (see :func:`setup`); a dry run has no model, optimizer or loaders."""

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
    build_model: bool = True,
) -> Trainer:
    """Build a run from ``cfg`` (see :func:`cvt.train.fit` for the arguments), reporting problems cheapest first.

    Under torchrun this joins the process group (leave it with :func:`cvt.train.distributed.cleanup`).
    ``build_model=False``: the dry run (recipe, data paths, data, device, packages, the architecture for these
    classes, the batch split), with no model built and no file touched. Raises :class:`TrainConfigError`,
    :class:`~cvt.core.errors.DataError` or :class:`TrainError` (one line).
    """
    out = Path(out)
    validate(cfg, check_paths=True)
    if cfg.run.tensorboard:
        tensorboard_writer()
    try:
        info, device = distributed.init(resolve_device(cfg.run.device))
    except UsageError as e:
        raise TrainConfigError(f"run.device: {e}") from None
    echo = echo if info.is_main else _silent
    d, a, run = cfg.data, cfg.augment, cfg.run
    data = _sources(d)
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
    dry = Trainer(cfg, out, info, device, data, spec, model_config, sampler, lr, echo)
    if not build_model:
        return dry

    resume_from = _prepare_out(out, resume, overwrite, info)
    raw = _placed(model if model is not None else _build_model(cfg, model_config, echo), cfg, info, device, echo)
    if model_config is not None:
        raw.config, raw.pretrained_cfg = model_config, spec
    optimizer = _optimizer(raw, cfg)
    amp_dtype = _amp_dtype(run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEma(raw, run.ema) if run.ema else None
    mixup = MixupCutmix(num_classes, a.mixup, a.cutmix, a.mix_prob, a.switch_prob, a.label_smoothing)
    train_loader, val_loader = _loaders(cfg, data, pre, sampler, info, device)
    return dataclasses.replace(
        dry,
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


def tensorboard_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainConfigError("run.tensorboard: needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


def _sources(d: DataSection) -> DataBundle:
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
    )
    if len(data.train) < d.batch_size:
        raise TrainConfigError(
            f"data.batch_size: {d.batch_size} is larger than the training set ({len(data.train)} images)"
        )
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


def _prepare_out(out: Path, resume: bool, overwrite: bool, info: DistInfo) -> Path | None:
    """Refuse to start over a run unless told; clear it for ``overwrite``. Returns the checkpoint to resume from."""
    last = ckpt.find_last(out)
    if last is not None and not resume and not overwrite:
        raise TrainError(
            f"{out} already holds a run ({last.name}): add --resume to continue it, --overwrite to start again, "
            "or choose another --out"
        )
    if overwrite and not resume and info.is_main:
        for name in OWNED_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    distributed.barrier(info)
    return ckpt.find_last(out) if resume else None


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

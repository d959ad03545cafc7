"""One training epoch: micro-batches, accumulation, AMP, clipping, EMA, mid-epoch checkpoints, progress."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CvtError
from ..data.augment import MixupCutmix
from .distributed import DistInfo, all_reduce_sum
from .ema import ModelEma
from .optim import lr_at, set_lr


class TrainingDiverged(CvtError, RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing anything after the last good epoch."""


@dataclass
class Schedule:
    """Everything :func:`lr_at` needs, fixed for the run."""

    total_steps: int
    warmup_steps: int
    base_lr: float
    warmup_lr: float
    min_lr: float

    def lr(self, step: int) -> float:
        return lr_at(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, base_lr=self.base_lr,
                     warmup_lr=self.warmup_lr, min_lr=self.min_lr)  # fmt: skip


@dataclass
class EpochSums:
    """Running sums of one epoch (checkpointed mid-epoch, so a resumed epoch reports the same numbers)."""

    loss: float = 0.0  # sum of per-sample losses
    correct: float = 0.0  # argmax == original label (on augmented, possibly mixed, images)
    images: float = 0.0
    skipped: float = 0.0  # unreadable images substituted
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class TrainParts:
    """The objects one epoch works with (built once by :func:`cvt.train.fit`)."""

    model: nn.Module  # what runs forward (maybe DDP- and/or compile-wrapped)
    raw_model: nn.Module  # the plain module (state dicts, EMA)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    device: torch.device
    num_classes: int
    seed: int
    accum_steps: int = 1
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    mixup: MixupCutmix | None = None
    label_smoothing: float = 0.0
    channels_last: bool = False
    dist: DistInfo = field(default_factory=DistInfo)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of the global torch generator for one optimizer step (drop path, dropout).

    Re-seeding at every step makes the stochastic layers a pure function of ``(seed, epoch, step, rank)``:
    a run resumed from any checkpoint draws exactly what the uninterrupted run drew.
    """
    return int(np.random.SeedSequence([seed, epoch, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def train_one_epoch(
    parts: TrainParts,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]],
    *,
    epoch: int,
    step: int,
    start_step: int,
    steps_per_epoch: int,
    sums: EpochSums,
    on_step: Callable[[int, int, EpochSums], None] | None = None,
    progress: bool = False,
    skipped_files: list[str] | None = None,
) -> tuple[int, EpochSums]:
    """Train from optimizer step ``start_step`` of ``epoch`` to its end.

    ``loader`` yields ``accum_steps`` micro-batches per optimizer step: ``(x (b, 3, H, W), y (b,), skipped)``.
    ``step`` is the global optimizer step count so far (it drives the LR schedule). ``on_step(step,
    step_in_epoch, sums)`` runs after every optimizer step (mid-epoch checkpoints). Returns the new global
    step and the epoch's sums (all-reduced over processes). Raises :class:`TrainingDiverged` on a NaN/inf loss.
    """
    p = parts
    model, opt = p.model, p.optimizer
    model.train()
    bar = _progress_bar(progress, steps_per_epoch, start_step, epoch)
    it = iter(loader)
    for s in range(start_step, steps_per_epoch):
        t0 = time.perf_counter()
        lr = p.schedule.lr(step)
        set_lr(opt, lr)
        torch.manual_seed(step_seed(p.seed, epoch, step, p.dist.rank))
        # One small vector reduced once per step: loss sum, correct, images, skipped, non-finite flag.
        stats = torch.zeros(5, dtype=torch.float64, device=p.device)
        for a in range(p.accum_steps):
            x, y, bad = next(it)
            if skipped_files is not None and bad:
                skipped_files.extend(b for b in bad if len(skipped_files) < 20)
            stats[3] += len(bad)
            x = x.to(p.device, non_blocking=True)
            y = y.to(p.device, non_blocking=True)
            if p.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = None
            if p.mixup is not None and p.mixup.enabled:
                # the same lam on every process (seeded by the step), like timm's per-batch draw
                x, target = p.mixup(x, y, np.random.default_rng([p.seed, epoch, step, a, 0x313]))
            sync = a == p.accum_steps - 1
            ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(p.device.type, dtype=p.amp_dtype, enabled=p.amp_dtype is not None):
                    logits = model(x)
                logits = logits.float()
                if target is not None:
                    per_sample = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1)
                else:
                    per_sample = F.cross_entropy(logits, y, reduction="none", label_smoothing=p.label_smoothing)
                loss = per_sample.mean() / p.accum_steps
                if p.scaler is not None:
                    p.scaler.scale(loss).backward()
                else:
                    loss.backward()
            stats[0] += per_sample.detach().sum().double()
            stats[1] += (logits.detach().argmax(dim=1) == y).sum()
            stats[2] += y.numel()
        stats[4] = (~torch.isfinite(stats[0])).double()
        all_reduce_sum(stats, p.dist)
        if stats[4] > 0:
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"the loss became {float(stats[0] / stats[2]) if stats[2] else float('nan')} at epoch {epoch + 1}, "
                f"step {s + 1} (lr {lr:.3g}); stopped before updating the weights"
            )
        if p.clip_grad is not None:
            if p.scaler is not None:
                p.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(p.raw_model.parameters(), p.clip_grad)
        if p.scaler is not None:
            p.scaler.step(opt)
            p.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if p.ema is not None:
            p.ema.update(p.raw_model)
        step += 1
        dt = time.perf_counter() - t0
        sums.loss += float(stats[0])
        sums.correct += float(stats[1])
        sums.images += float(stats[2])
        sums.skipped += float(stats[3])
        sums.seconds += dt
        if bar is not None:
            bar.set_postfix_str(
                f"loss {float(stats[0] / stats[2]):.4f}  lr {lr:.2e}  {float(stats[2]) / max(dt, 1e-9):.0f} img/s",
                refresh=False,
            )
            bar.update(1)
        if on_step is not None:
            on_step(step, s + 1, sums)
    if bar is not None:
        bar.close()
    return step, sums


def _progress_bar(enabled: bool, total: int, initial: int, epoch: int) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True,
                unit="step", file=sys.stderr)  # fmt: skip

"""One training epoch: micro-batches, accumulation, AMP, clipping, EMA, progress. Pure with respect to its inputs:
it advances the model, optimizer, scaler and EMA it is given and returns what it measured."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CvtError, first_line
from ..core.labels import check_class_indices
from .distributed import all_gather_objects, all_reduce_sum
from .optim import set_lr
from .trainer import EpochStats, Trainer, TrainState

Batch = tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]  # images, labels, (path, message) skipped


class TrainingDiverged(CvtError, RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing anything after the last good epoch."""


class StepSum(IntEnum):
    """The slots of the small vector each optimizer step sums over its micro-batches and reduces over processes once."""

    LOSS = 0  # sum of per-sample losses
    CORRECT = 1  # argmax == original label
    IMAGES = 2
    SKIPPED = 3  # unreadable files met
    NON_FINITE = 4  # 1 when this process's loss sum is NaN or infinite


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of the torch generator for one optimizer step (drop path, dropout).

    Re-seeding at every step makes the stochastic layers a pure function of ``(seed, epoch, step, rank)``:
    a run resumed from any checkpoint draws exactly what the uninterrupted run drew.
    """
    return int(np.random.SeedSequence([seed, epoch, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def manual_seed(seed: int, device: torch.device) -> None:
    """Seed the generators a run on ``device`` draws from: the CPU's and its GPU's (``torch.manual_seed`` would
    reseed every GPU of the machine)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def train_one_epoch(
    trainer: Trainer,
    state: TrainState,
    loader: Iterable[Batch],
    *,
    on_step: Callable[[int, int, EpochStats], None] | None = None,
) -> EpochStats:
    """Train epoch ``state.epoch`` from its optimizer step ``state.step_in_epoch`` to its end.

    ``loader`` yields ``accum_steps`` micro-batches per optimizer step: ``(images (b, 3, H, W), labels (b,), skipped)``,
    ``skipped`` the ``(path, message)`` pairs of the unreadable files met (counted once each per epoch).
    ``state.step`` (global optimizer steps so far) drives the LR schedule and the per-step seeds; ``state.sums``
    holds what a resumed epoch had measured. ``on_step(step, step_in_epoch, stats)`` runs after every optimizer
    step (mid-epoch checkpoints). Returns the whole epoch's stats, summed over processes. Raises
    :class:`TrainingDiverged` on a NaN/inf loss, before the weights are updated.
    """
    run, accum = trainer.cfg.run, trainer.cfg.optim.accum_steps
    epoch, step = state.epoch, state.step
    stats = dataclasses.replace(state.sums, skipped_files={**state.sums.skipped_files})
    batches = iter(loader)
    trainer.wrapped.train()
    bar = _progress_bar(run.progress and trainer.dist.is_main, trainer.steps_per_epoch, state.step_in_epoch, epoch)
    with bar or contextlib.nullcontext():
        for step_in_epoch in range(state.step_in_epoch, trainer.steps_per_epoch):
            started = time.perf_counter()
            lr = trainer.lr(step)
            set_lr(trainer.optimizer, lr)
            manual_seed(step_seed(run.seed, epoch, step, trainer.dist.rank), trainer.device)
            sums = torch.zeros(len(StepSum), dtype=torch.float64, device=trainer.device)
            skipped: list[tuple[str, str]] = []
            for micro in range(accum):
                images, labels, unreadable = _next_batch(batches)
                skipped += unreadable
                mix_seed = [run.seed, epoch, step, micro, 0x313]
                per_sample, logits, labels = _forward_backward(trainer, images, labels, mix_seed, micro == accum - 1)
                sums[StepSum.LOSS] += per_sample.sum().double()
                sums[StepSum.CORRECT] += (logits.argmax(dim=1) == labels).sum()
                sums[StepSum.IMAGES] += labels.numel()
                sums[StepSum.SKIPPED] += len(unreadable)
            sums[StepSum.NON_FINITE] = (~torch.isfinite(sums[StepSum.LOSS])).double()
            all_reduce_sum(sums, trainer.dist)
            total = sums.tolist()  # indexed by StepSum
            mean_loss = total[StepSum.LOSS] / total[StepSum.IMAGES] if total[StepSum.IMAGES] else float("nan")
            if total[StepSum.NON_FINITE] > 0:
                raise TrainingDiverged(
                    f"the loss became {mean_loss} at epoch {epoch + 1}, step {step_in_epoch + 1} (lr {lr:.3g}); "
                    "stopped before updating the weights"
                )
            _update(trainer)
            step += 1
            if total[StepSum.SKIPPED] > 0:  # rare: only then do processes exchange names (a file counts once)
                stats.add_skipped(pair for names in all_gather_objects(skipped, trainer.dist) for pair in names)
            seconds = time.perf_counter() - started
            stats.add(total[StepSum.LOSS], total[StepSum.CORRECT], total[StepSum.IMAGES], seconds=seconds)
            if bar is not None:
                images_per_s = total[StepSum.IMAGES] / max(seconds, 1e-9)
                bar.set_postfix_str(f"loss {mean_loss:.4f}  lr {lr:.2e}  {images_per_s:.0f} img/s", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(step, step_in_epoch + 1, stats)
    return stats


def _next_batch(batches: Iterator[Batch]) -> Batch:
    """The next micro-batch. A cvt error raised in a DataLoader worker arrives with the worker's traceback in its
    message: keep the original one line (the ``--debug`` traceback still has it all)."""
    try:
        return next(batches)
    except CvtError as e:
        if "\n" not in str(e):
            raise
        raise type(e)(first_line(e, limit=2000)) from e


def _forward_backward(
    trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, mix_seed: list[int], sync: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss, backward (gradients all-reduced only when ``sync``).

    Returns ``(per-sample losses (b,), logits (b, K), labels (b,))``, detached, on the device.
    """
    check_class_indices(labels.cpu(), len(trainer.data.classes))  # the rule of every front-end's trainer
    images = images.to(trainer.device, non_blocking=True)
    labels = labels.to(trainer.device, non_blocking=True)
    if trainer.cfg.run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target, smoothing = labels, trainer.cfg.augment.label_smoothing
    if trainer.mixup is not None:  # one lam per global batch (seeded by the step, as timm draws one per batch)
        images, target = trainer.mixup(images, labels, np.random.default_rng(mix_seed))
        smoothing = 0.0  # already in the mixed (b, K) targets
    wrapped, amp_dtype = trainer.wrapped, trainer.amp_dtype
    with contextlib.nullcontext() if sync or not hasattr(wrapped, "no_sync") else wrapped.no_sync():
        with torch.autocast(trainer.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = wrapped(images)
        logits = logits.float()
        per_sample = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
        trainer.scaler.scale(per_sample.mean() / trainer.cfg.optim.accum_steps).backward()
    return per_sample.detach(), logits.detach(), labels


def _update(trainer: Trainer) -> None:
    """The optimizer step: gradients unscaled (fp16) and clipped as configured, then the EMA follows."""
    if trainer.cfg.optim.clip_grad is not None:
        trainer.scaler.unscale_(trainer.optimizer)
        nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.cfg.optim.clip_grad)
    trainer.scaler.step(trainer.optimizer)  # without fp16 the scaler is disabled: optimizer.step()
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.ema is not None:
        trainer.ema.update(trainer.model)


def _progress_bar(enabled: bool, total: int, initial: int, epoch: int) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}",
        leave=False,
        dynamic_ncols=True,
        unit="step",
        file=sys.stderr,
    )

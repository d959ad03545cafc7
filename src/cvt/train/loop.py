"""One training epoch: micro-batches, accumulation, AMP, clipping, EMA, progress. Pure with respect to its inputs:
it advances the model, optimizer, scaler and EMA it is given and returns what it measured."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CvtError, first_line
from .distributed import all_gather_objects, all_reduce_sum
from .optim import set_lr
from .trainer import EpochStats, Trainer, TrainState

Batch = tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]  # images, labels, (path, message) skipped


class TrainingDiverged(CvtError, RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing anything after the last good epoch."""


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

    ``loader`` yields ``accum_steps`` micro-batches per optimizer step: ``(x (b, 3, H, W), y (b,), skipped)``,
    ``skipped`` the ``(path, message)`` pairs of the unreadable files met (counted once each per epoch).
    ``state.step`` (global optimizer steps so far) drives the LR schedule and the per-step seeds; ``state.sums``
    holds what a resumed epoch had measured. ``on_step(step, step_in_epoch, stats)`` runs after every optimizer
    step (mid-epoch checkpoints). Returns the whole epoch's stats, summed over processes. Raises
    :class:`TrainingDiverged` on a NaN/inf loss, before the weights are updated.
    """
    t, run, accum = trainer, trainer.cfg.run, trainer.cfg.optim.accum_steps
    epoch, step = state.epoch, state.step
    stats = dataclasses.replace(state.sums, skipped_files={**state.sums.skipped_files})
    batches = iter(loader)
    t.forward.train()
    bar = _progress_bar(run.progress and t.dist.is_main, t.steps_per_epoch, state.step_in_epoch, epoch)
    with bar or contextlib.nullcontext():
        for k in range(state.step_in_epoch, t.steps_per_epoch):
            t0 = time.perf_counter()
            lr = t.lr(step)
            set_lr(t.optimizer, lr)
            manual_seed(step_seed(run.seed, epoch, step, t.dist.rank), t.device)
            # One small vector reduced once per step: loss sum, correct, images, skipped, non-finite flag.
            sums = torch.zeros(5, dtype=torch.float64, device=t.device)
            skipped: list[tuple[str, str]] = []
            for a in range(accum):
                x, y, bad = _next_batch(batches)
                skipped += bad
                per_sample, logits, y = _forward_backward(t, x, y, [run.seed, epoch, step, a, 0x313], a == accum - 1)
                sums[0] += per_sample.sum().double()
                sums[1] += (logits.argmax(dim=1) == y).sum()
                sums[2] += y.numel()
                sums[3] += len(bad)
            sums[4] = (~torch.isfinite(sums[0])).double()
            all_reduce_sum(sums, t.dist)
            if sums[4] > 0:
                raise TrainingDiverged(
                    f"the loss became {float(sums[0] / sums[2]) if sums[2] else float('nan')} at epoch {epoch + 1}, "
                    f"step {k + 1} (lr {lr:.3g}); stopped before updating the weights"
                )
            _update(t)
            step += 1
            if sums[3] > 0:  # rare: only then do processes exchange names (a file counts once, whoever met it)
                stats.add_skipped(pair for names in all_gather_objects(skipped, t.dist) for pair in names)
            dt = time.perf_counter() - t0
            stats.add(*sums[:3].tolist(), seconds=dt)
            if bar is not None:
                loss, images_per_s = float(sums[0] / sums[2]), float(sums[2]) / max(dt, 1e-9)
                bar.set_postfix_str(f"loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.0f} img/s", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(step, k + 1, stats)
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
    t: Trainer, x: torch.Tensor, y: torch.Tensor, mix_seed: list[int], sync: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss, backward (gradients all-reduced only when ``sync``).

    Returns ``(per-sample losses (b,), logits (b, K), labels (b,))``, detached, on the device.
    """
    x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
    if t.cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target, smoothing = y, t.cfg.augment.label_smoothing
    if t.mixup is not None:  # one lam per global batch (seeded by the step, as timm draws one per batch)
        x, target = t.mixup(x, y, np.random.default_rng(mix_seed))
        smoothing = 0.0  # already in the mixed (b, K) targets
    model = t.forward
    with contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync():
        with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        per_sample = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
        t.scaler.scale(per_sample.mean() / t.cfg.optim.accum_steps).backward()
    return per_sample.detach(), logits.detach(), y


def _update(t: Trainer) -> None:
    """The optimizer step: gradients unscaled (fp16) and clipped as configured, then the EMA follows."""
    if t.cfg.optim.clip_grad is not None:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.optim.clip_grad)
    t.scaler.step(t.optimizer)  # without fp16 the scaler is disabled: optimizer.step()
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    if t.ema is not None:
        t.ema.update(t.model)


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

"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix of a classifier.

:func:`evaluate` runs a model over a loader of ``(images (B, 3, H, W), labels (B,), skipped)`` batches
(what :func:`cvt.data.datasets.collate` makes). Under ``torchrun`` each process evaluates its shard and passes
``all_reduce`` (sum a tensor over the processes, in place), so every process returns the whole data set's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, Sequence[str]]],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    all_reduce: Callable[[torch.Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Run ``model`` (in eval mode) over ``loader``.

    Returns ``{"n", "top1", "top5", "loss", "per_class" (K accuracies, None for absent classes),
    "confusion" (K x K counts, rows = true class), "images_per_s", "skipped", "skipped_files"}``.
    Accuracies are fractions in [0, 1]; ``loss`` is the mean cross-entropy.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    k = num_classes
    confusion = torch.zeros(k, k, dtype=torch.float64, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-5 hits, images, skipped
    skipped_files: list[str] = []
    t0 = time.perf_counter()
    for x, y, bad in loader:
        sums[3] += len(bad)
        skipped_files.extend(bad)
        if x.numel() == 0:
            continue
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, k), dim=1).indices  # (B, 5)
        sums[1] += (top == y[:, None]).any(dim=1).sum()
        sums[2] += y.numel()
        confusion.index_put_((y, top[:, 0]), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if all_reduce is not None:  # every process returns the whole data set's numbers
        all_reduce(sums)
        all_reduce(confusion)
    model.train(was_training)
    n = int(sums[2])
    cm = confusion.round().long().cpu()
    per_class_n = cm.sum(dim=1)
    per_class = [float(cm[i, i] / per_class_n[i]) if per_class_n[i] > 0 else None for i in range(k)]
    return {
        "n": n,
        "top1": float(cm.diagonal().sum()) / n if n else 0.0,
        "top5": float(sums[1]) / n if n else 0.0,
        "loss": float(sums[0]) / n if n else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "images_per_s": n / elapsed if elapsed > 0 else 0.0,
        "skipped": int(sums[3]),
        "skipped_files": skipped_files[:20],
    }

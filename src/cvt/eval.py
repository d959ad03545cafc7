"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix of a classifier.

:func:`evaluate` runs a model over a loader of ``(images (B, 3, H, W), labels (B,), skipped)`` batches
(what :func:`cvt.data.datasets.collate` makes). Under ``torchrun`` each process evaluates its shard and passes
``all_reduce`` (sum a tensor over the processes, in place), so every process returns the whole data set's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core.evaluation import NON_FINITE, NonFiniteOutputError

# the slots of the running sums, one float64 vector so that one all_reduce adds them all up
LOSS_SUM, TOP5_HITS, IMAGES, SKIPPED, NON_FINITE_IMAGES = range(5)


@dataclass(frozen=True)
class EvalResult:
    """:func:`evaluate`'s numbers. Accuracies are fractions in [0, 1]; ``loss`` is the mean cross-entropy.

    ``per_class``: ``K`` accuracies, ``None`` for classes without images; ``confusion``: ``K x K`` counts (rows:
    true class, columns: top-1 prediction); ``skipped_files``: the first 20 ``"path: reason"`` of the ``skipped``
    unreadable images; ``non_finite``: images whose output held NaN or inf (left out of every number).
    """

    n: int
    top1: float
    top5: float
    loss: float
    per_class: list[float | None]
    confusion: list[list[int]]
    images_per_s: float
    skipped: int
    skipped_files: list[str] = field(default_factory=list)
    non_finite: int = 0  # images whose output held NaN or inf: counted nowhere else


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
) -> EvalResult:
    """Run ``model`` (in eval mode, restored afterwards) over ``loader``; see :class:`EvalResult`.

    Images whose output holds NaN or inf count in ``non_finite`` only, never in an accuracy or the loss (the rule
    of :func:`cvt.core.evaluation.finite_rows`); ``cvt eval`` refuses such a result (:func:`check_finite`).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # indexed by LOSS_SUM, TOP5_HITS, ... NON_FINITE_IMAGES
    skipped_files: list[str] = []
    t0 = time.perf_counter()
    for images, labels, bad in loader:
        sums[SKIPPED] += len(bad)
        skipped_files.extend(bad)
        if images.numel() == 0:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        finite = torch.isfinite(logits).all(dim=1)  # (B,): the rule of cvt.core.evaluation.finite_rows
        sums[NON_FINITE_IMAGES] += (~finite).sum()
        logits, labels = logits[finite], labels[finite]
        sums[LOSS_SUM] += F.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(min(5, num_classes), dim=1).indices  # (B, 5)
        sums[TOP5_HITS] += (top == labels[:, None]).any(dim=1).sum()
        sums[IMAGES] += labels.numel()
        confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels, dtype=torch.float64), accumulate=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if all_reduce is not None:  # every process returns the whole data set's numbers
        all_reduce(sums)
        all_reduce(confusion)
    model.train(was_training)
    n = int(sums[IMAGES])
    counts = confusion.round().long().cpu()
    per_class_n = counts.sum(dim=1)
    per_class = [float(counts[i, i] / per_class_n[i]) if per_class_n[i] > 0 else None for i in range(num_classes)]
    return EvalResult(
        n=n,
        top1=float(counts.diagonal().sum()) / n if n else 0.0,
        top5=float(sums[TOP5_HITS]) / n if n else 0.0,
        loss=float(sums[LOSS_SUM]) / n if n else float("nan"),
        per_class=per_class,
        confusion=counts.tolist(),
        images_per_s=n / elapsed if elapsed > 0 else 0.0,
        skipped=int(sums[SKIPPED]),
        skipped_files=skipped_files[:20],
        non_finite=int(sums[NON_FINITE_IMAGES]),
    )


def check_finite(result: EvalResult, what: str) -> None:
    """Raise :class:`~cvt.core.evaluation.NonFiniteOutputError` naming ``what`` (the data) when any image's output
    was not finite: the numbers of the others would hide that the model fails on these."""
    if result.non_finite:
        total = result.n + result.non_finite
        raise NonFiniteOutputError(f"{what}: {NON_FINITE} ({result.non_finite} of {total} readable images)")

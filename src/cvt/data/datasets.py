"""Torch data sets over the framework-free sources of :mod:`cvt.data.sources`, for training and evaluation.

:class:`TrainSet` and :class:`EvalSet` wrap a source with a transform; they never let a corrupt image stop a run:

* :class:`TrainSet` substitutes the next readable image (so batch shapes, and every process's step count
  under DDP, stay the same) and reports what it skipped with the sample;
* :class:`EvalSet` drops the image (a substitute would be counted twice) and reports it.

:class:`TrainSet` is indexed by ``(index, epoch)`` pairs (see :class:`~cvt.train.sampler.EpochBatchSampler`):
the augmentation generator is seeded from ``(seed, epoch, index)``, so results do not depend on the number
of DataLoader workers or processes, nor on where a resumed run picks up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError, ImageError
from .sources import with_path


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch (independent of workers and processes)."""
    return np.random.default_rng([seed, epoch, index])


class TrainSet(torch.utils.data.Dataset):
    """``dataset[(index, epoch)] -> (image (3, S, S), class, skipped)``; corrupt images are substituted.

    ``skipped`` is a tuple of ``(path, "path: reason")`` pairs for the unreadable files met on the way (the
    path alone identifies a file: one met twice, as itself and as a stand-in, is counted once).
    """

    def __init__(self, source: Any, transform: Callable[[Image.Image, np.random.Generator], torch.Tensor], seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple[tuple[str, str], ...]]:
        index, epoch = key
        skipped: list[tuple[str, str]] = []
        n = len(self.source)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                img, y = self.source.load(j)
                x = self.transform(img, sample_rng(self.seed, epoch, index))
            except ImageError as e:
                name = self.source.describe(j)
                skipped.append((name, with_path(e, name)))
                continue
            return x, y, tuple(skipped)
        raise DataError(f"no readable image in the training set ({skipped[0][1] if skipped else 'empty'})")


class EvalSet(torch.utils.data.Dataset):
    """``dataset[i] -> (image (3, S, S) or None, class, skipped)``; a corrupt image gives ``None``."""

    def __init__(self, source: Any, transform: Callable[[Image.Image], torch.Tensor]):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, tuple[str, ...]]:
        try:
            img, y = self.source.load(i)
            return self.transform(img), y, ()
        except ImageError as e:
            return None, self.source.targets[i], (with_path(e, self.source.describe(i)),)


Item = tuple[torch.Tensor | None, int, tuple[str, ...]]


def collate(batch: list[Item]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """-> ``(images (B, 3, S, S), labels (B,), skipped file messages)``; ``None`` images are left out."""
    kept = [(x, y) for x, y, _ in batch if x is not None]
    skipped = [s for _, _, bad in batch for s in bad]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept], dtype=torch.long), skipped

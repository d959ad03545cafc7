"""Which samples each process reads at each step: a resumable, distributed, seeded batch sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..core.errors import ConfigError


class EpochBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of ``(index, epoch)`` pairs for one process (the data set keys augmentation on both).

    Each epoch is one permutation of the training set drawn from ``(seed, epoch)``. Global batch ``s`` is
    ``perm[s*G : (s+1)*G]``; process ``r`` of ``W`` reads every ``W``-th of its samples (like
    ``DistributedSampler``) and splits them into ``accum`` micro-batches. So for any ``W`` and ``accum`` the
    union of what all processes read at optimizer step ``s`` is the same ``G`` samples: a 2-process run sees
    the same global batches as a 1-process run. The last partial global batch is dropped.

    ``set_epoch(epoch, start_step)`` starts the epoch at optimizer step ``start_step`` (resuming mid-epoch
    reads nothing it would skip).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
        seed: int = 0,
    ):
        if global_batch % (world_size * accum_steps):
            raise ConfigError(
                f"data.batch_size {global_batch} is not divisible by processes x accum_steps "
                f"({world_size} x {accum_steps})"
            )
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.accum = rank, world_size, accum_steps
        self.micro = global_batch // (world_size * accum_steps)
        self.seed = seed
        self.steps_per_epoch = num_samples // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.permutation(self.epoch).tolist()
        size = self.global_batch
        for step in range(self.start_step, self.steps_per_epoch):
            mine = perm[step * size : (step + 1) * size][self.rank :: self.world_size]
            for micro in range(self.accum):
                yield [(i, self.epoch) for i in mine[micro * self.micro : (micro + 1) * self.micro]]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: process ``r`` of ``W`` reads indices ``r, r+W, ...`` (no padding, so nothing counts twice)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

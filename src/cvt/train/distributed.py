"""``torchrun`` support: the process group from the environment, reductions, rank-0 helpers.

``torchrun --nproc_per_node N -m cvt train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address (multi-node: ``--nnodes`` and ``--rdzv_endpoint``). Backend: NCCL on CUDA, gloo on CPU.
Every helper is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes, if any; ``device`` becomes this process's GPU (``cuda:LOCAL_RANK``).

    Returns ``(where this process is, its device)``. Leave the group with :func:`cleanup`.
    """
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo(), torch.device("cuda", device.index or 0) if device.type == "cuda" else device
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **({"device_id": device} if device.type == "cuda" else {}))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, backend=backend), device


def cleanup() -> None:
    """Leave the process group (if this process is in one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order: ``[obj]`` for a single process."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics) so all evaluate the same model."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

"""The limits and batching of ``cvt serve`` (no web framework imported: ``cvt serve --help`` needs none)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits and batching (the ``cvt serve`` options of the same names)."""

    max_batch: int = 32  # images per forward pass, at most
    max_wait_ms: float = 10.0  # how long the first image of a batch waits for others
    workers: int = 2  # threads decoding and preprocessing uploads
    max_queue: int = 256  # admitted requests at most (reading, decoding, waiting, running); more get 503
    timeout_s: float = 30.0  # per request, from admission to answer; longer gets 504
    max_upload_mb: float = 20.0  # request body limit, MiB
    batch_invariant: bool = True  # fixed-shape forward passes: answers independent of batch-mates
    batch_shape: int | None = None  # their rows; None: 8 on CPU (as fast per image there), max_batch on GPUs
    weights: str | None = None  # where the weights came from (shown by /v1/model)

    def rows_per_pass(self, device: torch.device) -> int | None:
        """Rows of each forward pass (``None``: a batch's own size)."""
        if not self.batch_invariant:
            return None
        return min(self.max_batch, self.batch_shape or (8 if device.type == "cpu" else self.max_batch))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

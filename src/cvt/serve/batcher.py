"""Dynamic batching: requests are gathered up to ``max_batch`` rows or ``max_wait`` seconds, then run as one batch
(in passes of ``batch_shape`` rows, each pass's requests answered as soon as it is done).

One model thread runs the batches (off the event loop; one at a time, so batches do not fight for the cores). A
request's answer does not depend on its batch-mates: with ``batch_shape=S`` every forward pass has exactly ``S``
rows (a batch of ``n`` runs as ``ceil(n / S)`` passes, the last padded with zeros). Why: on CPU, MKL picks its GEMM
kernel by the number of rows, and the layers that see one row per image (the cls-only block, the head) give results
that differ in the last bits between batch sizes (measured with torch 2.13 / MKL 2024.2 on 2 cores: batch sizes
1..64 fall in 5 classes of different results for cvt-13), while the rows of one fixed shape are bitwise
independent of the other rows (checked by tests/test_serve.py against batch-1 answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .metrics import ServeMetrics


@dataclass
class _Item:
    x: torch.Tensor  # (3, S, S): one preprocessed image
    future: asyncio.Future[torch.Tensor]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Gather :meth:`submit` calls into batches for ``run_batch`` (``(B, 3, S, S)`` -> ``(B, C)`` on CPU).

    Args:
        run_batch: the model call; runs in the model thread.
        max_batch: rows per forward pass, at most.
        max_wait_s: how long the first request of a batch waits for others.
        batch_shape: rows of every forward pass (batch-invariant answers; see the module docstring); ``None``: a
            batch runs as one pass of its own size.
        metrics: where batch sizes, durations and the queue depth go.
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_wait_s: float,
        batch_shape: int | None,
        metrics: ServeMetrics,
    ):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.batch_shape, self.metrics = batch_shape, metrics
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cvt-model")  # the one thread that runs the model
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cvt-batcher")

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """One ``(3, S, S)`` input -> its ``(C,)`` output row, computed in some batch."""
        if self._closing:
            raise RuntimeError("the server is shutting down")
        item = _Item(x, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        self.metrics.queue_depth.inc()
        return await item.future

    async def close(self) -> None:
        """Run what is queued (without waiting for batch-mates), then stop the loop and the model thread."""
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stop = await self._gather(first)
            live = [it for it in batch if not it.future.done()]  # timed-out requests are dropped, not computed
            self.metrics.queue_depth.dec(len(batch))
            if live:
                await self._run(live)
            if stop:
                return

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``(items of one batch, whether close() was called)``: up to ``max_batch``, or until the first's deadline."""
        batch = [first]
        deadline = first.enqueued + self.max_wait_s  # counted from arrival: requests that queued behind a batch go now
        while len(batch) < self.max_batch:
            try:
                timeout = 0.0 if self._closing else deadline - time.monotonic()
                item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self, items: list[_Item]) -> None:
        """Run ``items`` as passes of ``batch_shape`` rows (one pass of their own size without one), answering each
        pass's requests as soon as it is done: their clients send their next requests while the later passes run,
        so the model thread is never idle waiting for them (measured: 77% -> 97% of the offline ceiling with 32
        clients, benchmarks/bench_serve.py), and no request waits for passes after its own."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        size = self.batch_shape or len(items)
        i = 0
        while i < len(items):
            if self.batch_shape is not None:  # a partial last pass takes requests that arrived meanwhile
                self._top_up(items, i + size)
            chunk = [it for it in items[i : i + size] if not it.future.done()]  # timed out while earlier passes ran
            i += size
            if not chunk:
                continue
            x = torch.stack([it.x for it in chunk])  # (n, 3, S, S), n <= size
            try:
                out = await loop.run_in_executor(self.executor, self._forward, x)
            except Exception as e:  # the model failed (out of memory ...): every request of the pass gets the error
                for it in chunk:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            for it, row in zip(chunk, out):  # out may have padding rows after the real ones
                if not it.future.done():
                    self.metrics.queue_seconds.observe(started - it.enqueued)
                    it.future.set_result(row.clone())
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _top_up(self, items: list[_Item], want: int) -> None:
        """Append queued requests to ``items`` (without waiting) until it has ``want`` rows or ``max_batch`` plus
        one pass: rows that would be zero padding do real work instead."""
        while len(items) < want and len(items) < self.max_batch + (self.batch_shape or 0):
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is None:  # close() was called: leave its marker for the loop
                self._queue.put_nowait(None)
                return
            self.metrics.queue_depth.dec()
            items.append(item)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, S, S)`` -> ``(n', C)``, ``n' >= n``: one pass of exactly ``batch_shape`` rows (zero-padded), or of
        ``n`` rows without a ``batch_shape``."""
        pad = -len(x) % self.batch_shape if self.batch_shape is not None else 0
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        return self.run_batch(x)

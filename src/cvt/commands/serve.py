"""``cvt serve``: an HTTP inference server with dynamic batching, Prometheus metrics and a web page.

Binds 127.0.0.1 unless ``--host`` says otherwise. SIGTERM (or Ctrl+C) stops accepting connections, answers the
requests in flight, then exits with status 0.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Literal

from ..core import bounds
from ..core.errors import require
from ..predict import Predictor
from ..serve.settings import ServeSettings
from ._signature import Arg, default_of


def run_serve(
    *,
    model: str | None = None,
    weights: Annotated[str | None, Arg(metavar="FILE|DIR")] = None,
    labels: Annotated[str | None, Arg(metavar="FILE")] = None,
    host: str = "127.0.0.1",
    port: Annotated[int, Arg(minimum=0)] = 8000,
    max_batch: Annotated[int, Arg(minimum=1)] = default_of(ServeSettings, "max_batch"),
    max_wait_ms: Annotated[float, Arg(minimum=0)] = default_of(ServeSettings, "max_wait_ms"),
    workers: Annotated[int | None, Arg(minimum=1)] = None,
    max_queue: Annotated[int, Arg(minimum=1)] = default_of(ServeSettings, "max_queue"),
    timeout_s: Annotated[float, Arg(minimum=0.001)] = default_of(ServeSettings, "timeout_s"),
    max_upload_mb: Annotated[float, Arg(minimum=0.001)] = default_of(ServeSettings, "max_upload_mb"),
    max_pixels: Annotated[int, Arg(minimum=1)] = default_of(Predictor, "max_pixels"),
    topk: Annotated[int, Arg(minimum=1)] = default_of(Predictor, "topk"),
    device: str | None = None,
    batch_invariant: bool = True,
    batch_shape: Annotated[int | None, Arg(minimum=1)] = None,
    explain: bool = True,
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info",
) -> int:
    """Serve a CvT over HTTP: POST /v1/predict, POST /v1/explain, GET /v1/model, /healthz, /readyz, /metrics,
    the Open Inference Protocol v2 (/v2/models/NAME/infer) and a web page at /. Needs the serve extra.

    Args:
        model: checkpoint or architecture name (default: cvt-13, or what --weights holds)
        weights: local weights: official .pth, HF dir, cvt-torch file
        labels: class names: one per line, or JSON (list or id2label)
        host: address to bind (0.0.0.0 for every interface)
        port: TCP port (0: any free port)
        max_batch: images per batch, at most
        max_wait_ms: how long the first image of a batch waits for others
        workers: threads decoding uploads (default: the CPU count, at most 4)
        max_queue: requests in progress at most; more get 503 with Retry-After
        timeout_s: per-request limit; longer gets 504
        max_upload_mb: request body limit in MiB; larger gets 413
        max_pixels: refuse larger images (413)
        topk: default classes per image (?topk= overrides)
        device: cpu, cuda or cuda:N (default: cuda when available)
        batch_invariant: fixed-shape forward passes (--batch-shape rows, padded): an answer never depends on its
            batch-mates (without: one pass per batch at its own size; answers may differ in the last bits)
        batch_shape: rows per forward pass (default: 8 on CPU, where batch 8 is as fast per image as 32; --max-batch
            on GPUs)
        explain: attention maps at /v1/explain (a second copy of the model in memory)
        log_level: uvicorn's log level
    """
    bounds.check_options(  # sizes first (cvt.core.bounds): threads and batches are allocated at start-up
        max_batch=(max_batch, bounds.BATCH_SIZE),
        batch_shape=(batch_shape, bounds.BATCH_SIZE),
        workers=(workers, bounds.workers_limit()),
    )
    require("fastapi", "serve", "cvt serve")
    require("uvicorn", "serve", "cvt serve")
    require("prometheus_client", "serve", "cvt serve")
    import uvicorn

    from ..serve.app import create_app

    settings = ServeSettings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        workers=workers or min(4, os.cpu_count() or 1),
        max_queue=max_queue,
        timeout_s=timeout_s,
        max_upload_mb=max_upload_mb,
        batch_invariant=batch_invariant,
        batch_shape=batch_shape,
        weights=str(weights) if weights else model,
    )
    common = dict(weights=weights, labels=labels, topk=topk, device=device, max_pixels=max_pixels)
    predictor = Predictor(model, **common)
    explainer = Predictor(model, explain=True, **common) if explain else None
    app = create_app(predictor, explainer, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(timeout_s) + 5,  # in-flight requests end by their own timeout before this
        lifespan="on",
    )
    # uvicorn re-raises the signal that stopped it once it has drained; a no-op handler for SIGTERM turns that into
    # a normal return, so a graceful stop exits with status 0 (Ctrl+C still reports "interrupted", 130)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # the port was taken or the app failed to start: uvicorn said why
        print("cvt serve: error: the server did not start (see the message above)", file=sys.stderr)
        return 1
    return 0

"""The ASGI app of ``cvt serve``: routes, limits and error shape, around a :class:`~cvt.predict.Predictor`.

Routes (the OpenAPI schema is at ``/openapi.json``, the docs at ``/docs``):

* ``POST /v1/predict?topk=K``: the image as multipart field ``file`` or as the raw body -> one record shaped like
  an element of ``cvt predict --format json`` (``path`` is the uploaded file name or null);
* ``POST /v1/explain``: the same upload -> PNG: the model's input crop with its last-layer cls attention over it;
* ``GET /v1/model``, ``GET /healthz`` (the process answers), ``GET /readyz`` (model loaded and warmed up),
  ``GET /metrics`` (Prometheus text), ``GET /`` (the web page);
* Open Inference Protocol v2 (KServe) for image bytes: ``POST /v2/models/{name}/infer`` with one ``BYTES`` input
  (base64 strings, one per image) -> outputs ``labels`` (BYTES), ``indices`` (INT64) and ``probs`` (FP32), each
  ``[n, k]``; ``GET /v2/models/{name}``, ``/v2/health/live``, ``/v2/health/ready``.

Every error is one line of JSON, ``{"error": "..."}``, with its status: 400 corrupt or truncated image, malformed
request; 413 body over ``max_upload_mb`` (from Content-Length before anything is read, else counted while
streaming) or an image over the pixel limit; 415 not an image; 422 a bad query value; 503 queue full (with
``Retry-After``); 504 the request took longer than ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import first_line
from ..data.transforms import denormalize
from ..explain import MIN_PANEL, cls_attention, overlay
from ..predict import Prediction, Predictor
from .batcher import Batcher
from .decode import UploadError, decode_image
from .metrics import ServeMetrics
from .settings import ServeSettings

STATIC = Path(__file__).parent / "static"
TopK = Annotated[int, Query(ge=1, description="classes per image")]
T = TypeVar("T")

_UPLOAD_BODY = {  # the request body the routes read themselves (FastAPI cannot infer it from `request: Request`)
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class UploadTooLarge(Exception):
    """The body grew past the limit while streaming (its Content-Length was absent or lied)."""


class Overloaded(Exception):
    """The admission queue is full."""


class _Server:
    """What the routes share: the predictor(s), the batcher, the decoding pool, the metrics and the limits."""

    def __init__(self, predictor: Predictor, explainer: Predictor | None, settings: ServeSettings):
        self.predictor, self.explainer, self.settings = predictor, explainer, settings
        self.metrics = ServeMetrics(settings.max_batch)
        self.batcher = Batcher(
            predictor.probabilities,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            batch_shape=settings.rows_per_pass(predictor.device),
            metrics=self.metrics,
        )
        # one intra-op thread per decoding thread (a per-thread setting): their small tensor ops must not spawn
        # OpenMP teams that fight the model thread for the cores (cvt-13 on 2 cores, 32 clients: 5% more images/s)
        self.pool = ThreadPoolExecutor(settings.workers, "cvt-decode", initializer=torch.set_num_threads, initargs=(1,))
        self.ready = False
        self.in_flight = 0

    # ------------------------------------------------------------------ life cycle
    async def warm_up(self) -> None:
        """One forward pass of each shape used (and one attention map) before /readyz says yes."""
        size = self.predictor.preprocess.img_size
        x = torch.zeros(self.batcher.batch_shape or self.settings.max_batch, 3, size, size)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.batcher.executor, self.predictor.probabilities, x)
        if self.explainer is not None:
            await loop.run_in_executor(self.batcher.executor, self._explain_png, x[0])
        self.ready = True

    # ------------------------------------------------------------------ request handling
    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Count the request against ``max_queue`` (503 when full) for as long as it is handled."""
        if self.in_flight >= self.settings.max_queue:
            raise Overloaded()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def within_deadline(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work`` under the per-request timeout (504 past it), counted against the queue limit (503 when full)."""
        async with self.admitted():
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    return await work()
            except TimeoutError:
                raise HTTPException(
                    504, f"no answer within the {self.settings.timeout_s:g} s request timeout"
                ) from None

    async def prepare(self, data: bytes, name: str) -> torch.Tensor:
        """Image bytes -> ``(3, S, S)`` model input, decoded in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._prepare_sync, data, name)

    def _prepare_sync(self, data: bytes, name: str) -> torch.Tensor:
        image = decode_image(data, self.predictor.max_pixels, name)
        try:
            return self.predictor.transform(image)
        except Exception as e:  # a bad image must not stop the server
            raise UploadError(f"{name}: cannot preprocess ({first_line(e, 160)})") from None

    def record(self, row: torch.Tensor, path: str | None, topk: int) -> dict[str, Any]:
        """``(C,)`` probabilities -> the ``cvt predict --format json`` record (top ``topk``)."""
        k = min(topk, row.shape[-1])
        values, indices = row[None].topk(k, dim=-1)  # as Predictor does, on a (1, C) batch
        idx = indices[0].tolist()
        labels = self.predictor.labels
        return Prediction(path, [labels[i] for i in idx], idx, [float(v) for v in values[0]]).to_dict()

    async def explain_png(self, x: torch.Tensor) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self._explain_png, x)

    def _explain_png(self, x: torch.Tensor) -> bytes:
        """``(3, S, S)`` input -> PNG of the crop (at least MIN_PANEL wide) with the cls attention map over it."""
        assert self.explainer is not None
        heat = cls_attention(self.explainer.model, x[None].to(self.explainer.device))[0].cpu()  # (H_kv, W_kv)
        pre = self.predictor.preprocess
        image = denormalize(x, pre.mean, pre.std)
        if image.size[0] < MIN_PANEL:
            image = image.resize((MIN_PANEL, MIN_PANEL), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        overlay(image, heat).save(buf, format="PNG")
        return buf.getvalue()

    def model_info(self) -> dict[str, Any]:
        p = self.predictor
        return {
            "model": p.model.config.name,
            "weights": self.settings.weights,
            "num_classes": p.model.num_classes,
            "labels": len(p.labels),
            "preprocess": asdict(p.preprocess),
            "device": str(p.device),
            "topk": p.topk,
            "max_pixels": p.max_pixels,
            "explain": self.explainer is not None,
            "settings": {k: v for k, v in asdict(self.settings).items() if k != "weights"},
            "rows_per_pass": self.batcher.batch_shape,
        }


async def read_upload(request: Request) -> tuple[bytes, str]:
    """``(image bytes, name)`` from multipart field ``file`` or the raw body (the guard caps the size)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise UploadError("multipart body: no file field named 'file'")
            return await file.read(), file.filename or "upload"
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks), "upload"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class _Guard:
    """Pure ASGI middleware: the upload limit (before and while the body is read) and per-route request metrics."""

    ROUTES = ("/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics", "/")

    def __init__(self, app: ASGIApp, server: _Server):
        self.app, self.server = app, server

    def _route(self, path: str) -> str:  # a bounded set of labels, whatever paths clients send
        if path in self.ROUTES:
            return path
        return "/v2/models/{name}/infer" if path.startswith("/v2/") and path.endswith("/infer") else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, status, started = self.server.settings.max_upload_bytes, [500], time.monotonic()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge()
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:  # refused before a byte of the body is read
                await _too_large(self.server.settings)(scope, receive, send_status)
                return
            await self.app(scope, counted, send_status)
        finally:
            route = self._route(scope["path"])
            self.server.metrics.requests.labels(route, str(status[0])).inc()
            self.server.metrics.latency.labels(route).observe(time.monotonic() - started)


def _too_large(settings: ServeSettings) -> JSONResponse:
    return _error(413, f"request body: larger than the {settings.max_upload_mb:g} MiB upload limit (--max-upload-mb)")


def _handlers(app: FastAPI, server: _Server) -> None:
    """Every error as one line of JSON ``{"error": ...}`` with its status."""

    @app.exception_handler(UploadError)
    async def _upload(request: Request, e: UploadError) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(UploadTooLarge)
    async def _large(request: Request, e: UploadTooLarge) -> JSONResponse:
        return _too_large(server.settings)

    @app.exception_handler(Overloaded)
    async def _full(request: Request, e: Overloaded) -> JSONResponse:
        # a second: a batch frees up to max_batch places; clients back off and retry
        msg = f"server busy: {server.settings.max_queue} requests in progress (--max-queue); retry later"
        return _error(503, msg, {"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:  # logged with its traceback by uvicorn
        return _error(500, f"internal error: {type(e).__name__}: {first_line(e)}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {err.get('msg', 'invalid')}")


def create_app(
    predictor: Predictor, explainer: Predictor | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """The ASGI app serving ``predictor`` (and attention maps from ``explainer``, built with ``explain=True``).

    Run it with uvicorn (``cvt serve`` does); the batcher starts and warms up in the app's lifespan, and drains in
    its shutdown.
    """
    settings = settings or ServeSettings()
    server = _Server(predictor, explainer, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        warm = asyncio.create_task(server.warm_up())
        try:
            yield
        finally:
            if not warm.done():
                warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await server.batcher.close()  # answers what is queued, then stops the model thread
            server.pool.shutdown(wait=True)

    app = FastAPI(
        title="cvt serve",
        summary="CvT image classification: top-k classes and attention maps",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs and /redoc pages load their scripts from a CDN: nothing here may need one
        redoc_url=None,
    )
    app.state.server = server
    _handlers(app, server)
    _routes(app, server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Guard, server=server)
    return app


def _routes(app: FastAPI, server: _Server) -> None:
    default_topk = server.predictor.topk

    @app.post("/v1/predict", openapi_extra=_UPLOAD_BODY, summary="top-k classes of one image")
    async def predict(request: Request, topk: TopK = default_topk) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            data, name = await read_upload(request)
            row = await server.batcher.submit(await server.prepare(data, name))
            return server.record(row, None if name == "upload" else name, topk)

        return await server.within_deadline(work)

    @app.post("/v1/explain", openapi_extra=_UPLOAD_BODY, summary="attention overlay (PNG) of one image",
              response_class=Response, responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    async def explain(request: Request) -> Response:
        if server.explainer is None:
            raise HTTPException(404, "attention maps are off (the server was started with --no-explain)")

        async def work() -> bytes:
            data, name = await read_upload(request)
            return await server.explain_png(await server.prepare(data, name))

        return Response(await server.within_deadline(work), media_type="image/png")

    @app.get("/v1/model", summary="architecture, weights, labels, preprocessing and limits")
    async def model() -> dict[str, Any]:
        return server.model_info()

    @app.get("/healthz", summary="the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ready"}) if server.ready else _error(503, "warming up")

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    _v2_routes(app, server)


def _v2_routes(app: FastAPI, server: _Server) -> None:
    """Open Inference Protocol v2 (KServe), for image bytes: what existing serving clients send."""
    name = server.predictor.model.config.name or "cvt"

    def check(model_name: str) -> None:
        if model_name != name:
            raise HTTPException(404, f"model {model_name!r}: not served here (this server serves {name!r})")

    @app.get("/v2/health/live", summary="v2: live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="v2: ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 503)

    @app.get("/v2/models/{model_name}", summary="v2: model metadata")
    async def metadata(model_name: str) -> dict[str, Any]:
        check(model_name)
        return {
            "name": name,
            "platform": "pytorch",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "indices", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "probs", "datatype": "FP32", "shape": [-1, -1]},
            ],
        }

    @app.post("/v2/models/{model_name}/infer", summary="v2: classify base64 image bytes (one BYTES input)")
    async def infer(model_name: str, request: Request) -> dict[str, Any]:
        check(model_name)

        async def work() -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                raise UploadError("v2 request: the body is not JSON") from None
            images, topk, request_id = _v2_inputs(body, server.settings.max_batch, server.predictor.topk)
            tensors = await asyncio.gather(*(server.prepare(b, f"inputs[0].data[{i}]") for i, b in enumerate(images)))
            rows = await asyncio.gather(*(server.batcher.submit(x) for x in tensors))
            records = [server.record(row, None, topk) for row in rows]
            return _v2_outputs(name, request_id, records)

        return await server.within_deadline(work)


def _v2_inputs(body: Any, max_images: int, default_topk: int) -> tuple[list[bytes], int, str | None]:
    """``(image bytes, topk, request id)`` from a v2 request: one BYTES input of base64 strings."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise UploadError("v2 request: expected exactly one input (BYTES, base64-encoded image files)")
    tensor = inputs[0]
    data = tensor.get("data")
    if tensor.get("datatype") != "BYTES" or not isinstance(data, list) or not data:
        raise UploadError("v2 request: inputs[0] must be datatype BYTES with a non-empty data list")
    if len(data) > max_images:
        raise UploadError(f"v2 request: {len(data)} images; at most {max_images} (--max-batch) per request")
    images = []
    for i, item in enumerate(data):
        try:
            images.append(base64.b64decode(item, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise UploadError(f"v2 request: inputs[0].data[{i}] is not a base64 string") from None
    params = {**(body.get("parameters") or {}), **(tensor.get("parameters") or {})}
    topk = params.get("topk", default_topk)
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise UploadError(f"v2 request: parameters.topk must be an integer >= 1, got {topk!r}")
    request_id = body.get("id")
    return images, topk, request_id if isinstance(request_id, str) else None


def _v2_outputs(name: str, request_id: str | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    n, k = len(records), len(records[0]["indices"])
    out: dict[str, Any] = {"model_name": name, "outputs": []}
    if request_id is not None:
        out["id"] = request_id
    for field, datatype in (("labels", "BYTES"), ("indices", "INT64"), ("probs", "FP32")):
        flat = [v for r in records for v in r[field]]
        out["outputs"].append({"name": field, "datatype": datatype, "shape": [n, k], "data": flat})
    return out


__all__ = ["ServeSettings", "create_app"]

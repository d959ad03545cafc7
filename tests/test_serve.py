"""``cvt serve``: a real uvicorn server in a subprocess on a loopback port, called over HTTP (no test client).

cvt-tiny weights (a native file), real photos. Checked: answers equal ``cvt predict --format json`` bitwise;
concurrent (batched) answers equal batch-1 answers bitwise; each bad input gets its status and a one-line JSON
error, and a good request right after still succeeds; queue full -> 503 + Retry-After; timeout -> 504; SIGTERM with
requests in flight answers them and exits 0; /metrics, /readyz, /v1/model, the v2 protocol, the page.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.serve

from test_transforms import PHOTOS, photo_paths  # noqa: E402

TIMEOUT = 60.0  # seconds: any single wait in these tests


# ---------------------------------------------------------------------------- a server in a subprocess
class Server:
    """A ``cvt serve`` subprocess and a tiny HTTP client for it (stdlib only)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, chunked: bool = False
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)

    def predict(self, data: bytes, topk: int = 5, filename: str | None = None) -> tuple[int, Any]:
        if filename is None:
            status, _, body = self.request("POST", f"/v1/predict?topk={topk}", data)
        else:
            form, ctype = multipart({"file": (filename, data)})
            status, _, body = self.request("POST", f"/v1/predict?topk={topk}", form, {"Content-Type": ctype})
        return status, json.loads(body)

    def metric(self, name: str) -> float:
        text = self.request("GET", "/metrics")[2].decode()
        return sum(float(m) for m in re.findall(rf"^{re.escape(name)} (\S+)$", text, flags=re.M))


def multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: ``{name: (filename or None, bytes)}`` -> ``(body, content type)``."""
    boundary = "cvt-test-boundary-7f3a"
    out = io.BytesIO()
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        out.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def serve(tmp_path: Path, weights: Path, *options: str) -> Iterator[Server]:
    """Start ``cvt serve --port 0`` (uvicorn picks a free port and logs it), wait until /readyz says ready."""
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "cvt", "serve", "--weights", str(weights), "--port", "0", *options]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        server = Server(proc, _port(proc, log), log)
        deadline = time.monotonic() + TIMEOUT
        while server.request("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def _port(proc: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return int(found[1])
        assert proc.poll() is None, f"cvt serve exited early:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)
    raise AssertionError(f"cvt serve did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    import cvt
    from cvt.torch.weights import save_native

    path = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    model = cvt.create_model("cvt-tiny")
    save_native(model.state_dict(), model.config, path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_weights) -> Iterator[Server]:
    """Batches of 6 (the number of photos), a 1 MiB upload limit and a 1 megapixel limit."""
    options = ["--max-batch", "6", "--max-wait-ms", "150", "--max-upload-mb", "1", "--max-pixels", "1000000"]
    with serve(tmp_path_factory.mktemp("serve-a"), tiny_weights, *options) as s:
        yield s


def _photos() -> list[tuple[str, bytes]]:
    return [(name, photo_paths()[name].read_bytes()) for name in PHOTOS]


# ---------------------------------------------------------------------------- answers
def test_answers_equal_cvt_predict_bitwise(server, tiny_weights):
    paths = [str(photo_paths()[n]) for n in PHOTOS]
    command = [sys.executable, "-m", "cvt", "predict", *paths, "--weights", str(tiny_weights), "--format", "json"]
    command += ["--batch-size", "6"]  # the server's batch shape: bitwise equality needs the same GEMM shapes
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(proc.stdout)
    for (name, data), want in zip(_photos(), expected):
        status, got = server.predict(data, filename=name)
        assert status == 200, got
        assert got == {**want, "path": name}  # labels, indices and probabilities (floats compared exactly)
        status, raw = server.predict(data)  # the raw body: same answer, no file name
        assert status == 200 and raw == {**want, "path": None}


def test_concurrent_batched_answers_equal_batch_one_bitwise(server):
    photos = _photos()
    alone = [server.predict(data)[1] for _, data in photos]  # one at a time: each its own batch
    batches_before = server.metric("cvt_batch_size_count")
    barrier = threading.Barrier(len(photos) * 2)

    def call(i: int) -> Any:
        barrier.wait(timeout=TIMEOUT)
        status, body = server.predict(photos[i % len(photos)][1])
        assert status == 200, body
        return body

    with ThreadPoolExecutor(len(photos) * 2) as pool:
        together = list(pool.map(call, range(len(photos) * 2)))
    assert together == alone + alone  # bitwise: JSON floats round-trip exactly
    batches = server.metric("cvt_batch_size_count") - batches_before
    assert batches < len(together), "the concurrent requests were never batched together"


def test_v2_infer_matches_v1(server):
    photos = _photos()[3:]  # the JPEGs: their base64 fits the 1 MiB upload limit
    body = {
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                    "data": [base64.b64encode(d).decode() for _, d in photos]}],
        "parameters": {"topk": 3},
    }  # fmt: skip
    status, _, raw = server.request("POST", "/v2/models/cvt-tiny/infer", json.dumps(body))
    assert status == 200, raw
    answer = json.loads(raw)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert answer["id"] == "req-1" and outputs["probs"]["shape"] == [3, 3]
    for i, (_, data) in enumerate(photos):
        v1 = server.predict(data, topk=3)[1]
        assert outputs["labels"]["data"][3 * i : 3 * i + 3] == v1["labels"]
        assert outputs["indices"]["data"][3 * i : 3 * i + 3] == v1["indices"]
        assert outputs["probs"]["data"][3 * i : 3 * i + 3] == v1["probs"]
    assert server.request("POST", "/v2/models/other/infer", json.dumps(body))[0] == 404
    assert server.get_json("/v2/models/cvt-tiny")["inputs"][0]["datatype"] == "BYTES"


def test_explain_returns_the_overlay_png(server):
    form, ctype = multipart({"file": ("chelsea.png", photo_paths()["chelsea.png"].read_bytes())})
    status, headers, body = server.request("POST", "/v1/explain", form, {"Content-Type": ctype})
    assert status == 200 and headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.size == (224, 224)  # the 64x64 crop, enlarged for display


def test_model_readyz_healthz_metrics_openapi_and_page(server):
    info = server.get_json("/v1/model")
    assert info["model"] == "cvt-tiny" and info["num_classes"] == 10 and info["labels"] == 10
    assert info["preprocess"]["img_size"] == 64 and info["settings"]["max_batch"] == 6
    assert server.get_json("/readyz") == {"status": "ready"} and server.get_json("/healthz") == {"status": "ok"}
    paths = server.get_json("/openapi.json")["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/v2/models/{model_name}/infer"} <= set(paths)
    status, headers, page = server.request("GET", "/")
    assert status == 200 and b'<label for="file"' in page and headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert server.request("GET", asset)[0] == 200
    server.predict(b"not an image")
    text = server.request("GET", "/metrics")[2].decode()
    for series in (
        'cvt_requests_total{route="/v1/predict",status="200"}',
        'cvt_requests_total{route="/v1/predict",status="415"}',
        "cvt_batch_size_bucket",
        "cvt_batch_seconds_bucket",
        "cvt_request_seconds_bucket",
        "cvt_queue_depth ",
        "cvt_requests_in_flight ",
    ):
        assert series in text, series


# ---------------------------------------------------------------------------- bad input
def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims ``width x height`` (a decompression bomb's header, without the bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # width, height, then depth, colour ...
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _big_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_inputs_get_their_status_and_a_one_line_error(server):
    good = photo_paths()["coffee.png"].read_bytes()
    jpeg = photo_paths()["rocket.jpg"].read_bytes()
    half = len(good) // 2  # inside the PNG's compressed pixels
    no_file, no_file_type = multipart({"other": (None, b"x")})
    big = b"\x89PNG" + b"\0" * (1024 * 1024 + 10)  # over the 1 MiB limit
    cases = [  # (what, body, headers, chunked, status, words in the error)
        ("not an image", b"hello, world", {}, False, 415, "not an image"),
        ("empty", b"", {}, False, 400, "empty body"),
        ("truncated", jpeg[: len(jpeg) // 3], {}, False, 400, "truncated"),
        ("corrupt", good[:half] + b"\xff" * 1000 + good[half + 1000 :], {}, False, 400, "corrupt"),
        ("over the pixel limit", _big_png(1200, 1000), {}, False, 413, "1,200,000 pixels"),
        ("decompression bomb header", _png_claiming(100_000, 100_000), {}, False, 413, "too large"),
        ("over the upload limit", big, {}, False, 413, "upload limit"),
        ("over the upload limit, chunked", iter([big[:500_000], big[500_000:]]), {}, True, 413, "upload limit"),
        ("multipart without file", no_file, {"Content-Type": no_file_type}, False, 400, "'file'"),
    ]
    for what, body, headers, chunked, status, words in cases:
        got, _, raw = server.request("POST", "/v1/predict", body, headers, chunked=chunked)
        assert got == status, (what, raw)
        assert raw.count(b"\n") == 0 and words in json.loads(raw)["error"], (what, raw)
        assert list(json.loads(raw)) == ["error"], what
        assert server.predict(good)[0] == 200, f"a good request after {what} failed"
    got, _, raw = server.request("POST", "/v1/predict?topk=0", good)
    assert got == 422 and json.loads(raw) == {"error": "topk: Input should be greater than or equal to 1"}
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}
    got, _, raw = server.request("POST", "/v2/models/cvt-tiny/infer", json.dumps(body))
    assert got == 400 and "not a base64 string" in json.loads(raw)["error"]
    assert server.predict(good)[0] == 200


# ---------------------------------------------------------------------------- load and shutdown
def _wait_for(server: Server, metric: str, value: float) -> None:
    deadline = time.monotonic() + TIMEOUT
    while server.metric(metric) < value:
        assert time.monotonic() < deadline, f"{metric} never reached {value}"
        time.sleep(0.02)


def test_queue_full_gives_503_and_slow_requests_504(tmp_path, tiny_weights):
    # every batch waits 2 s for batch-mates; requests time out after 1 s; two requests fill the queue
    options = ["--max-batch", "64", "--max-wait-ms", "2000", "--max-queue", "2", "--timeout-s", "1"]
    data = photo_paths()["coffee.png"].read_bytes()
    with serve(tmp_path, tiny_weights, *options) as server, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(server.predict, data) for _ in range(2)]
        _wait_for(server, "cvt_requests_in_flight", 2)
        status, headers, raw = server.request("POST", "/v1/predict", data)
        assert status == 503 and headers["retry-after"] == "1" and "--max-queue" in json.loads(raw)["error"]
        for future in waiting:
            status, body = future.result(timeout=TIMEOUT)
            assert status == 504 and body == {"error": "no answer within the 1 s request timeout"}
        assert server.get_json("/healthz") == {"status": "ok"}  # still serving
        assert server.metric('cvt_requests_total{route="/v1/predict",status="503"}') == 1


def test_sigterm_answers_requests_in_flight_then_exits_0(tmp_path, tiny_weights):
    options = ["--max-batch", "64", "--max-wait-ms", "1500"]  # requests wait in the batcher when SIGTERM comes
    photos = _photos()[:3]
    with serve(tmp_path, tiny_weights, *options) as server, ThreadPoolExecutor(3) as pool:
        expected = [server.predict(d)[1] for _, d in photos]
        in_flight = [pool.submit(server.predict, d) for _, d in photos]
        _wait_for(server, "cvt_queue_depth", 3)
        server.proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=TIMEOUT) for f in in_flight]
        assert answers == [(200, e) for e in expected]
        assert server.proc.wait(timeout=TIMEOUT) == 0, server.log.read_text()
        assert "Traceback" not in server.log.read_text()

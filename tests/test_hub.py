"""Pretrained downloads without the network: a local server mimicking the hub, the hub cache layout, and
the offline errors (clear and fast)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import cvt
from cvt.core.errors import WeightsError
from cvt.core.hub import cached_checkpoint, download_checkpoint
from cvt.core.presets import CHECKPOINTS, Checkpoint
from cvt.torch.weights import save_native, save_official

hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = Checkpoint("cvt-tiny-test", "cvt-tiny", 64, "in1k", "test-org/cvt-tiny", "CvT-tiny-64x64.pth", 0.0, 0.875)

pytestmark = pytest.mark.hub


class HubServer:
    """``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` like the hub: X-Repo-Commit, ETag, 404 codes."""

    def __init__(self, files: dict[str, dict[str, bytes]]):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path))
                repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
                name = rest.partition("/")[2]
                if not sep or repo not in server.files:
                    return self._error("RepoNotFound")
                data = server.files[repo].get(name)
                if data is None:
                    return self._error("EntryNotFound")
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Network allowed (the conftest sets HF_HUB_OFFLINE=1) with an empty private cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


def _tiny_official_bytes(tmp_path: Path) -> tuple[bytes, dict[str, torch.Tensor]]:
    model = cvt.create_model("cvt-tiny")
    sd = model.state_dict()
    p = save_official(sd, tmp_path / "w.pth")
    return p.read_bytes(), sd


def test_download_falls_back_to_bin_then_uses_the_cache(online, tmp_path):
    data, _ = _tiny_official_bytes(tmp_path)
    with HubServer({TINY.hf_repo: {"pytorch_model.bin": data}}) as srv:
        path = download_checkpoint(TINY, endpoint=srv.url)
        asked = [p.rsplit("/", 1)[-1] for _, p in srv.requests]
    assert path.read_bytes() == data and path.name == "pytorch_model.bin"
    assert str(path).startswith(str(online)) and "models--test-org--cvt-tiny" in str(path)
    assert asked[0] == "model.safetensors" and "pytorch_model.bin" in asked  # safetensors preferred
    # server gone: the cached file is found without any request
    assert download_checkpoint(TINY, endpoint=srv.url) == path == cached_checkpoint(TINY)


def test_create_model_pretrained_downloads_converts_and_uses_quick_gelu(online, tmp_path, monkeypatch):
    data, sd = _tiny_official_bytes(tmp_path)
    monkeypatch.setitem(CHECKPOINTS, TINY.name, TINY)
    with HubServer({TINY.hf_repo: {"pytorch_model.bin": data}}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        model = cvt.create_model(TINY.name, pretrained=True)
    assert not model.training and model.config.activation == "quick_gelu" and model.load_report.ok
    ref = cvt.create_model("cvt-tiny")
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x), rtol=0, atol=0)


def test_missing_files_and_repos_are_reported(online):
    with HubServer({TINY.hf_repo: {}}) as srv:
        with pytest.raises(WeightsError) as e:
            download_checkpoint(TINY, endpoint=srv.url)
        assert "model.safetensors not found; pytorch_model.bin not found" in str(e.value)
        other = Checkpoint("x", "cvt-tiny", 64, "in1k", "nobody/nothing", "X.pth", 0.0, 0.875)
        with pytest.raises(WeightsError, match="repository not accessible"):
            download_checkpoint(other, endpoint=srv.url)


def test_offline_errors_are_clear_and_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    t = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        cvt.create_model("cvt-13", pretrained=True)  # HF_HUB_OFFLINE=1 from conftest
    msg = str(e.value)
    assert "offline" in msg and "CvT-13-224x224-IN-1k.pth" in msg and "--weights" in msg and "weights=" in msg
    # network "on" but nothing listening: refused at once, not after the hub's ~25 s of retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsError, match=r"cvt-13-384: cannot download microsoft/cvt-13-384: no network"):
        cvt.create_model("cvt-13-384", pretrained=True)
    assert time.perf_counter() - t < 5


def test_cache_layout_is_used_without_network(tmp_path, monkeypatch):
    """A file placed as huggingface_hub lays out its cache is found with HF_HUB_OFFLINE=1."""
    model = cvt.create_model("cvt-tiny")
    snap = tmp_path / "models--test-org--cvt-tiny" / "snapshots" / COMMIT
    save_native(model.state_dict(), model.config, snap / "model.safetensors")
    (tmp_path / "models--test-org--cvt-tiny" / "refs").mkdir()
    (tmp_path / "models--test-org--cvt-tiny" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setitem(CHECKPOINTS, TINY.name, TINY)
    assert download_checkpoint(TINY) == snap / "model.safetensors"
    loaded = cvt.create_model(TINY.name, pretrained=True)
    assert loaded.config.activation == "quick_gelu" and loaded.load_report.ok
    # a config made from the name (what a training recipe builds) takes the same released checkpoint
    from cvt.core.presets import get_config

    again = cvt.create_model(get_config(TINY.name), pretrained=True)
    assert again.load_report.ok and torch.equal(again.head.weight, loaded.head.weight)


def test_import_touches_no_network():
    code = (
        "import socket\n"
        "def boom(*a, **k): raise AssertionError('network touched')\n"
        "socket.create_connection = boom; socket.socket.connect = boom; socket.getaddrinfo = boom\n"
        "import sys, cvt\n"
        "cvt.create_model('cvt-tiny')\n"
        "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

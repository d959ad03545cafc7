"""Loading by Hugging Face hub id (``hf://owner/repo[@revision]``, ``hf-hub:owner/repo``) in every front-end.

The hub is unreachable here, so each test lays out a REAL hub cache on disk, byte for byte as huggingface_hub
writes it (``models--owner--repo/{blobs,refs,snapshots}``, snapshot files as relative symlinks to blobs named by
their hash), checks that huggingface_hub itself reads it (``scan_cache_dir``, ``try_to_load_from_cache``), and runs
with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at it. Nothing is mocked: huggingface_hub resolves the
revisions and finds the files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.core.errors import UnknownModelError, WeightsError
from cvt.core.presets import CHECKPOINTS, Checkpoint, weight_source
from cvt.torch.weights import save_native

hub = pytest.importorskip("huggingface_hub")

pytestmark = pytest.mark.hub

COMMIT_A = "a" * 8 + "0123456789abcdef0123456789abcdef"
COMMIT_B = "b" * 8 + "0123456789abcdef0123456789abcdef"
REPO = "someone/my-cvt"
TESTS = Path(__file__).parent
LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".pth")  # stored in LFS: blob named by sha256; others by git sha1


def _blob_name(name: str, data: bytes) -> str:
    """huggingface_hub names a blob by its ETag: the LFS sha256 for LFS files, the git blob sha1 otherwise."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs: tuple[str, ...] = ("main",)):
    """One snapshot of ``repo_id`` in huggingface_hub's cache layout; ``refs`` (branches) point at ``commit``."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for name, data in files.items():
        blob = storage / "blobs" / _blob_name(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))  # relative, as huggingface_hub's _create_symlink
    for ref in refs:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def dir_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline (read at call time by cvt), no proxies."""
    root = tmp_path / "hub-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def tiny_native_dir(tmp_path: Path, seed: int) -> tuple[Path, torch.nn.Module]:
    """cvt-tiny with random weights (norms randomised), saved in our native directory layout."""
    torch.manual_seed(seed)
    model = randomize_norms(cvt.create_model("cvt-tiny"), seed=seed).eval()
    out = save_native(model.state_dict(), model.config, tmp_path / f"native-{seed}", model.pretrained_cfg)
    return out, model


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


@pytest.fixture
def native_repo(cache, tmp_path) -> tuple[Path, Path]:
    """``someone/my-cvt``: main -> commit A (seed 0), branch v1 and tag-like ref "v2.0" -> commit B (seed 1)."""
    path_a, _ = tiny_native_dir(tmp_path, 0)
    path_b, _ = tiny_native_dir(tmp_path, 1)
    put_repo(cache, REPO, dir_files(path_a), COMMIT_A)
    put_repo(cache, REPO, dir_files(path_b), COMMIT_B, refs=("v1",))
    return path_a, path_b


# ---------------------------------------------------------------------------- the cache is huggingface_hub's own
def test_the_laid_out_cache_is_what_huggingface_hub_reads(native_repo, cache):
    info = hub.scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {COMMIT_A: {"main"}, COMMIT_B: {"v1"}}
    for rev, commit in ((None, COMMIT_A), ("v1", COMMIT_B), (COMMIT_B, COMMIT_B)):
        hit = hub.try_to_load_from_cache(REPO, "model.safetensors", cache_dir=cache, revision=rev)
        assert isinstance(hit, str) and Path(hit).parent.name == commit and Path(hit).is_symlink()


# ---------------------------------------------------------------------------- PyTorch
def test_native_repo_by_hub_id_equals_the_same_files_by_path(native_repo):
    path_a, _ = native_repo
    by_path = cvt.create_model(weights=path_a)
    for model in (
        cvt.create_model(weights="hf://someone/my-cvt"),
        cvt.create_model("hf-hub:someone/my-cvt"),  # timm's spelling, as the name
        cvt.create_model(weights=Path("hf://someone/my-cvt")),  # a Path has lost a slash: still the hub id
    ):
        assert torch.equal(logits(model), logits(by_path))
        assert model.config == by_path.config and model.load_report.ok
        assert model.pretrained_cfg.source == f"hf://{REPO}@{COMMIT_A}"
        assert model.pretrained_cfg.preprocess == by_path.pretrained_cfg.preprocess


def test_single_native_file_repo(cache, tmp_path):
    torch.manual_seed(3)
    model = randomize_norms(cvt.create_model("cvt-tiny"), seed=3).eval()
    path = save_native(model.state_dict(), model.config, tmp_path / "my-cvt.safetensors")
    put_repo(cache, "someone/one-file", {"my-cvt.safetensors": path.read_bytes(), "README.md": b"# card\n"}, COMMIT_A)
    loaded = cvt.create_model(weights="hf://someone/one-file")
    assert torch.equal(logits(loaded), logits(cvt.create_model(weights=path)))


def test_revisions_by_branch_and_by_commit(native_repo):
    _, path_b = native_repo
    want = logits(cvt.create_model(weights=path_b))
    main = logits(cvt.create_model(weights="hf://someone/my-cvt"))
    assert not torch.equal(main, want)  # the two commits differ
    for spelling in ("hf://someone/my-cvt@v1", f"hf://someone/my-cvt@{COMMIT_B}", "hf-hub:someone/my-cvt@v1"):
        model = cvt.create_model(weights=spelling) if spelling.startswith("hf://") else cvt.create_model(spelling)
        assert torch.equal(logits(model), want), spelling
        assert model.pretrained_cfg.source == f"hf://{REPO}@{COMMIT_B}"


def test_transformers_repo_runs_gelu_like_its_directory(cache, hf_tiny_dir):
    path, hf = hf_tiny_dir
    files = dir_files(path)
    assert "config.json" in files and "model.safetensors" in files
    put_repo(cache, "someone/hf-cvt", files, COMMIT_A)
    model = cvt.create_model(weights="hf://someone/hf-cvt")
    by_path = cvt.create_model(weights=path)
    assert model.config.activation == "gelu" == by_path.config.activation
    assert torch.equal(logits(model), logits(by_path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(logits(model), hf(x).logits, rtol=0, atol=1e-5)


def test_a_released_checkpoints_repo_means_that_checkpoint(cache, hf_tiny_dir, monkeypatch):
    """``hf-hub:<a released checkpoint's hf_repo>``: the registry's checkpoint (quick_gelu), not an HF directory."""
    released = Checkpoint("cvt-tiny-test", "cvt-tiny", 64, "in1k", "test-org/cvt-tiny", "CvT-tiny.pth", 0.0, 0.875)
    monkeypatch.setitem(CHECKPOINTS, released.name, released)
    path, _ = hf_tiny_dir
    put_repo(cache, released.hf_repo, dir_files(path), COMMIT_A)
    model = cvt.create_model("hf-hub:test-org/cvt-tiny")
    assert model.config.name == "cvt-tiny-test" and model.config.activation == "quick_gelu"
    assert model.pretrained_cfg.source == f"hf://test-org/cvt-tiny@{COMMIT_A}"
    ref = cvt.create_model("cvt-tiny-test", weights=path)  # the released name with the same files
    assert torch.equal(logits(model), logits(ref))


# ---------------------------------------------------------------------------- errors: one line naming the id
@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("hf://someone/my-cvt@nope", "hf://someone/my-cvt@nope: revision 'nope' of someone/my-cvt is not in"),
        ("hf://nobody/nothing", "hf://nobody/nothing: nobody/nothing is not in the Hugging Face cache"),
        ("hf-hub:nobody/nothing@v3", "hf-hub:nobody/nothing@v3: revision 'v3' of nobody/nothing is not in"),
    ],
)
def test_offline_misses_are_one_line_naming_the_id(native_repo, spelling, expected):
    with pytest.raises(WeightsError) as e:
        if spelling.startswith("hf://"):
            cvt.create_model(weights=spelling)
        else:
            cvt.create_model(spelling)
    msg = str(e.value)
    assert msg.startswith(expected) and "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_bad_ids_and_bare_repo_names_are_refused_with_the_spelling(cache):
    with pytest.raises(WeightsError, match=r"^hf://just a name: not a hub id; write hf://owner/repo"):
        cvt.create_model(weights="hf://just a name")
    with pytest.raises(UnknownModelError, match=r"^unknown model 'someone/my-cvt'; .* hf-hub:someone/my-cvt .*"):
        cvt.create_model("someone/my-cvt")
    with pytest.raises(UnknownModelError, match=r"hf://someone/my-cvt"):
        weight_source("someone/my-cvt")  # what every verb asks first
    with pytest.raises(WeightsError, match=r"^someone/my-cvt: no such file or directory; .*hf://someone/my-cvt"):
        cvt.create_model(weights="someone/my-cvt")
    with pytest.raises(ValueError, match="not also give weights"):
        cvt.create_model("hf-hub:someone/my-cvt", weights="x.safetensors")


def test_repo_without_weights_is_named(cache):
    put_repo(cache, "someone/empty", {"README.md": b"# nothing here\n", "config.json": b"{}"}, COMMIT_A)
    with pytest.raises(WeightsError, match=r"^hf://someone/empty: holds no CvT weights .* README.md"):
        cvt.create_model(weights="hf://someone/empty")


def test_weights_that_do_not_fit_name_the_hub_id_not_the_cache(native_repo):
    with pytest.raises(WeightsError) as e:
        cvt.create_model("cvt-13", weights="hf://someone/my-cvt")
    assert str(e.value).startswith(f"hf://{REPO}@{COMMIT_A}/model.safetensors: holds a cvt-tiny model")


def test_weight_source_lets_hub_ids_through(native_repo):
    src = weight_source("hf-hub:someone/my-cvt@v1")
    assert (src.name, src.weights, src.pretrained, src.has_weights) == (None, "hf-hub:someone/my-cvt@v1", False, True)
    assert weight_source(None, "hf://someone/my-cvt").has_weights


# ---------------------------------------------------------------------------- the CLI, end to end
def test_cli_predict_and_info_by_hub_id(native_repo, cache, tmp_path):
    from PIL import Image

    path_a, _ = native_repo
    img = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(img)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cvt", *args], capture_output=True, text=True, env=env)

    hub_run = run("predict", str(img), "--weights", "hf://someone/my-cvt", "--format", "json", "--topk", "3")
    assert hub_run.returncode == 0, hub_run.stderr
    path_run = run("predict", str(img), "--weights", str(path_a), "--format", "json", "--topk", "3")
    (got,), (want,) = json.loads(hub_run.stdout), json.loads(path_run.stdout)
    assert got["indices"] == want["indices"] and got["probs"] == want["probs"]
    miss = run("predict", str(img), "--weights", "hf://someone/my-cvt@nope")
    assert miss.returncode == 1 and miss.stderr.startswith("cvt predict: error: hf://someone/my-cvt@nope: ")
    assert len(miss.stderr.strip().splitlines()) == 1
    bare = run("info", "someone/my-cvt")
    assert bare.returncode == 2 and "hf-hub:someone/my-cvt" in bare.stderr


# ---------------------------------------------------------------------------- Flax (in process)
@pytest.mark.flax
def test_flax_loads_by_hub_id(native_repo):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    import cvt.flax as cf

    path_a, _ = native_repo
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    by_hub = cf.create_model(weights="hf://someone/my-cvt")
    by_path = cf.create_model(weights=path_a)
    assert by_hub.pretrained_cfg.source == f"hf://{REPO}@{COMMIT_A}"
    a, b = np.asarray(cf.jit_forward(by_hub)(x)), np.asarray(cf.jit_forward(by_path)(x))
    assert np.abs(a - b).max() <= 1e-6


# ---------------------------------------------------------------------------- Keras (one small subprocess)
_KERAS_WORKER = """
import json, sys
from pathlib import Path
import numpy as np
import cvt.keras as ck
from test_hub_ids import COMMIT_A, dir_files, put_repo
path, cache, preset = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
model = ck.create_model(weights=path)
ref = np.asarray(model(x))
out = {}
for label, make in (
    ("create_model", lambda: ck.create_model(weights="hf://someone/my-cvt")),
    ("from_preset", lambda: ck.from_preset("hf://someone/my-cvt")),
):
    m = make()
    out[label] = [float(np.abs(np.asarray(m(x)) - ref).max()), m.pretrained_cfg.source]
if hasattr(model, "save_to_preset"):  # a Keras preset written by cvt.keras, put on the hub, read by Keras and torch
    model.save_to_preset(str(preset))
    put_repo(cache, "someone/keras-cvt", dir_files(preset), COMMIT_A)
    m = ck.from_preset("hf://someone/keras-cvt")
    out["preset"] = [float(np.abs(np.asarray(m(x)) - ref).max()), m.pretrained_cfg.source]
print(json.dumps(out))
"""


@pytest.mark.keras
@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_keras_loads_by_hub_id(native_repo, cache, tmp_path):
    """Keras: ``create_model(weights=hf://...)`` and ``from_preset(hf://...)`` equal the same files by path; a Keras
    preset on the hub (once ``save_to_preset`` exists) loads in Keras and in PyTorch."""
    backend = "jax" if importlib.util.find_spec("jax") is not None else "tensorflow"
    path_a, _ = native_repo
    preset = tmp_path / "keras-preset"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS_WORKER, str(path_a), str(cache), str(preset)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for label in ("create_model", "from_preset", "preset"):
        if label == "preset" and label not in out:
            continue  # (cvt.keras cannot write presets yet)
        diff, source = out[label]
        assert diff <= 1e-6 and source == f"hf://{(label == 'preset' and 'someone/keras-cvt') or REPO}@{COMMIT_A}", (
            label,
            out[label],
        )
    if "preset" in out:  # PyTorch reads the same hub preset as the native files
        by_hub = cvt.create_model(weights="hf://someone/keras-cvt")
        torch.testing.assert_close(logits(by_hub), logits(cvt.create_model(weights=path_a)), rtol=0, atol=1e-6)


def test_a_copied_cache_still_resolves(native_repo, cache, tmp_path, monkeypatch):
    """The cache survives a copy with symlinks kept (what users do to carry it to an offline machine)."""
    moved = tmp_path / "moved-cache"
    shutil.copytree(cache, moved, symlinks=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    model = cvt.create_model(weights="hf://someone/my-cvt@v1")
    assert model.pretrained_cfg.source == f"hf://{REPO}@{COMMIT_B}"


def test_no_network_falls_back_to_the_cache_at_once(native_repo, monkeypatch):
    """Online but nothing listening: the cached snapshot of that revision, else one line saying so (no retries)."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t = time.perf_counter()
    model = cvt.create_model(weights="hf://someone/my-cvt@v1")
    assert model.pretrained_cfg.source == f"hf://{REPO}@{COMMIT_B}"
    with pytest.raises(WeightsError, match=r"^hf://nobody/nothing: cannot download from .*: no network"):
        cvt.create_model(weights="hf://nobody/nothing")
    assert time.perf_counter() - t < 10

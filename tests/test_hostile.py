"""Hostile inputs and environment faults against every verb.

One table: each row runs one ``cvt`` command line on bad inputs (symlink loops, NaN weights, impossible
BatchNorm statistics, non-regular and unwritable destinations, missing CUDA, bad arguments) and asserts what
the issue asks of every failure: it finishes in bounded time, exits with the right status, prints ONE line on
stderr naming the file or argument, prints no traceback, leaves the destination unchanged (or absent) and leaves
no temporary file. Rows run in-process (``cvt.cli.main``) under an alarm; a full disk (``RLIMIT_FSIZE``) and
Ctrl-C need their own process and have their own tests below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cvt
from conftest import TINY_HF, hf_model, read_only_dir, temp_files
from cvt.cli import main
from cvt.core.spec import PretrainedSpec
from cvt.torch.weights import save_native

LIMIT_S = 60  # bounded time per command (the slowest legitimate row takes a few seconds)
LABELS = ("cat", "dog", "fox")


# ---------------------------------------------------------------------------- the world the rows run in
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Weights (good, NaN, negative BatchNorm variance), an image folder with symlink loops, odd destinations."""
    w = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    model = cvt.CvT(cfg).eval()
    sd = model.state_dict()
    spec = PretrainedSpec(labels=LABELS)
    save_native(sd, cfg, w / "tiny.safetensors", spec)
    nan = dict(sd)
    key = next(k for k in nan if k.endswith("mlp.fc1.weight"))
    nan[key] = nan[key].clone()
    nan[key][0, 0] = float("nan")
    save_native(nan, cfg, w / "nan.safetensors", spec)
    neg = dict(sd)
    key = next(k for k in neg if k.endswith("running_var"))
    neg[key] = neg[key].clone()
    neg[key][0] = -1.0
    save_native(neg, cfg, w / "negvar.safetensors", spec)
    avg = cfg.replace(stages=tuple(dataclasses.replace(st, qkv_proj_method="avg") for st in cfg.stages))
    save_native(cvt.CvT(avg).state_dict(), avg, w / "avg.safetensors", spec)

    rng = np.random.default_rng(0)
    for label in LABELS:  # images/<class>/<k>.png, and loops the walker must see through
        (w / "images" / label).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(w / "images" / label / f"{k}.png")
    os.symlink("..", w / "images" / "cat" / "up")  # a directory loop: images/cat/up/cat/up/...
    os.symlink("self", w / "images" / "dog" / "self")  # a link to itself
    os.symlink(w / "images", w / "images" / "fox" / "root")  # an absolute link back to the top

    for label in ("dog", "fox", "wolf"):  # as many folders as classes, one of them not a class of the model
        (w / "wolves" / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(w / "wolves" / label / "0.png")

    # HF directories whose preprocessor_config.json is malformed

    hf_model(**TINY_HF).save_pretrained(w / "hf_bad_pre")
    (w / "hf_bad_pre" / "preprocessor_config.json").write_text('{"size": {"shortest_edge": -5}, "crop_pct": "big"}')
    hf_model(**TINY_HF).save_pretrained(w / "hf_bad_json")
    (w / "hf_bad_json" / "preprocessor_config.json").write_text('{"size": ')

    (w / "adir").mkdir()
    os.mkfifo(w / "fifo")
    (w / "ro").mkdir()
    (w / "ro" / "kept.json").write_text("kept\n")
    (w / "afile").write_text("a file, not a directory\n")
    with read_only_dir(w / "ro"):
        yield w


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Path], list[str]]
    code: int
    says: str  # a substring of the one stderr line
    dest: str | None = None  # relative to the world: must be unchanged (or stay absent)
    needs_user: bool = False  # writes into ro/: needs mode bits that bind (a user) or the immutable flag (root)


def _fingerprint(path: Path) -> tuple | None:
    """What 'unchanged' means: kind, mode and content (or listing) of the destination; None when absent."""
    if not os.path.lexists(path):
        return None
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return ("file", st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    if stat.S_ISDIR(st.st_mode):
        return ("dir", st.st_mode, tuple(sorted(os.listdir(path))))
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("other", stat.S_IFMT(st.st_mode))


class _Timeout(Exception):
    pass


def _run_bounded(argv: list[str]) -> tuple[int, float]:
    """``main(argv)`` under an alarm: a hang fails the row instead of the suite."""

    def alarm(signum, frame):
        raise _Timeout(f"{' '.join(argv)}: still running after {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(LIMIT_S)
    t0 = time.perf_counter()
    try:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exits (rows of tests/test_hostile_bounds.py reach them)
            code = e.code if isinstance(e.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, time.perf_counter() - t0


ROWS = [
    # --- weights that must not load: named tensor, one line, exit 1, nothing written
    Row(
        "predict-nan-weights",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "nan.safetensors")],
        1,
        "non-finite",
    ),
    Row(
        "predict-negative-bn-var",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "negvar.safetensors")],
        1,
        "running_var",
    ),
    Row(
        "convert-nan-weights",
        lambda w: ["convert", str(w / "nan.safetensors"), str(w / "out.safetensors"), "--to", "native"],
        1,
        "non-finite",
        dest="out.safetensors",
    ),
    Row("info-nan-weights", lambda w: ["info", str(w / "nan.safetensors")], 1, "non-finite"),
    Row(
        "eval-nan-weights",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "nan.safetensors")],
        1,
        "non-finite",
    ),
    Row(
        "export-nan-weights",
        lambda w: ["export", str(w / "x.onnx"), "--weights", str(w / "nan.safetensors"), "--format", "torchscript"],
        1,
        "non-finite",
        dest="x.pt",
    ),
    # --- destinations that are not regular files, or cannot be written
    Row(
        "convert-to-fifo",
        lambda w: ["convert", str(w / "tiny.safetensors"), str(w / "fifo"), "--to", "official", "--force"],
        1,
        "not a regular file",
        dest="fifo",
    ),
    Row(
        "convert-to-directory",
        lambda w: ["convert", str(w / "tiny.safetensors"), str(w / "adir"), "--to", "official", "--force"],
        1,
        "is a directory",
        dest="adir",
    ),
    Row(
        "convert-under-read-only",
        lambda w: ["convert", str(w / "tiny.safetensors"), str(w / "ro" / "x.pth"), "--to", "official"],
        1,
        "cannot write",
        dest="ro",
        needs_user=True,
    ),
    Row(
        "convert-under-a-file",
        lambda w: ["convert", str(w / "tiny.safetensors"), str(w / "afile" / "x.pth"), "--to", "official"],
        1,
        "afile",
        dest="afile",
    ),
    Row(
        "predict-output-fifo",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--output", str(w / "fifo")],
        1,
        "fifo",
        dest="fifo",
    ),
    Row(
        "predict-output-directory",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--output", str(w / "adir")],
        1,
        "adir",
        dest="adir",
    ),
    Row(
        "predict-output-read-only",
        lambda w: [
            "predict",
            str(w / "images"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--output",
            str(w / "ro" / "kept.json"),
        ],
        1,
        "cannot write",
        dest="ro/kept.json",
        needs_user=True,
    ),
    Row(
        "eval-output-read-only",
        lambda w: [
            "eval",
            str(w / "images"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--output",
            str(w / "ro" / "r.json"),
        ],
        1,
        "cannot write",
        dest="ro",
        needs_user=True,
    ),
    Row(
        "eval-confusion-directory",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--confusion", str(w / "adir")],
        1,
        "adir",
        dest="adir",
    ),
    Row(
        "export-under-read-only",
        lambda w: [
            "export",
            str(w / "ro" / "m.pt"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--format",
            "torchscript",
        ],
        1,
        "cannot write",
        dest="ro",
        needs_user=True,
    ),
    Row(
        "export-to-fifo",
        lambda w: [
            "export",
            str(w / "fifo"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--format",
            "torchscript",
            "--force",
        ],
        1,
        "fifo",
        dest="fifo",
    ),
    Row(
        "train-out-is-a-file",
        lambda w: ["train", "--out", str(w / "afile"), "--set", "schedule.epochs=1"],
        1,
        "afile",
        dest="afile",
    ),
    Row(
        "train-out-read-only",
        lambda w: ["train", "--out", str(w / "ro" / "run"), "--set", "schedule.epochs=1"],
        1,
        "cannot write",
        dest="ro",
        needs_user=True,
    ),
    Row(
        "bench-json-read-only",
        lambda w: [
            "bench",
            "--model",
            "cvt-tiny",
            "--no-peer",
            "--no-memory",
            "--cases",
            "infer-64-b1",
            "--json",
            str(w / "ro" / "b.json"),
        ],
        1,
        "cannot write",
        dest="ro",
        needs_user=True,
    ),
    # --- the environment: no CUDA here
    Row(
        "predict-cuda",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--device", "cuda"],
        2,
        "CUDA",
    ),
    Row(
        "eval-cuda",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--device", "cuda"],
        2,
        "CUDA",
    ),
    Row("bench-cuda", lambda w: ["bench", "--model", "cvt-tiny", "--no-peer", "--device", "cuda"], 2, "CUDA"),
    # --- bad arguments
    Row(
        "export-negative-atol",
        lambda w: [
            "export",
            str(w / "m.pt"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--format",
            "torchscript",
            "--atol",
            "-1",
        ],
        2,
        "atol",
        dest="m.pt",
    ),
    Row(
        "export-nan-atol",
        lambda w: [
            "export",
            str(w / "m.pt"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--format",
            "torchscript",
            "--atol",
            "nan",
        ],
        2,
        "atol",
        dest="m.pt",
    ),
    Row(
        "bench-bad-case",
        lambda w: ["bench", "--model", "cvt-tiny", "--no-peer", "--cases", "infer-x-b1"],
        2,
        "infer-x-b1",
    ),
    Row("bench-unknown-model", lambda w: ["bench", "--model", "cvt-99", "--no-peer"], 2, "cvt-99"),
    Row(
        "predict-missing-weights",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "nope.safetensors")],
        1,
        "nope.safetensors",
    ),
    Row(
        "eval-folders-match-no-class",
        lambda w: ["eval", str(w / "wolves"), "--weights", str(w / "tiny.safetensors")],
        1,
        "wolf",
    ),
    Row(
        "train-unknown-key",
        lambda w: ["train", "--out", str(w / "run"), "--set", "schedule.epochz=1"],
        2,
        "epochz",
        dest="run",
    ),
    Row(
        "train-bad-value",
        lambda w: ["train", "--out", str(w / "run"), "--set", "schedule.epochs=-1"],
        2,
        "schedule.epochs",
        dest="run",
    ),
    Row(
        "predict-malformed-preprocessor-config",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "hf_bad_pre")],
        1,
        "preprocessor_config.json",
    ),
    Row(
        "eval-preprocessor-config-not-json",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "hf_bad_json")],
        1,
        "preprocessor_config.json",
    ),
    Row(
        "convert-hf-dir-with-bad-preprocessor-config",
        lambda w: ["convert", str(w / "hf_bad_pre"), str(w / "n.safetensors"), "--to", "native"],
        1,
        "preprocessor_config.json",
        dest="n.safetensors",
    ),
    Row(
        "convert-avg-model-to-hf",
        lambda w: ["convert", str(w / "avg.safetensors"), str(w / "hf_out"), "--to", "hf"],
        1,
        "transformers",
        dest="hf_out",
    ),
    Row("info-unknown-model", lambda w: ["info", "cvt-99"], 2, "cvt-99"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, world: Path, capsys):
    if row.needs_user and os.access(world / "ro", os.W_OK):
        pytest.skip("root ignores permission bits, and the immutable flag is not available here")
    capsys.readouterr()
    before = _fingerprint(world / row.dest) if row.dest else None
    code, seconds = _run_bounded(row.argv(world))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("cvt ") and ": error: " in lines[0], lines[0]
    assert row.says in lines[0], lines[0]
    assert code == row.code, (code, lines[0])
    if row.dest:
        assert _fingerprint(world / row.dest) == before, f"{row.dest} changed"
    assert not temp_files(world), temp_files(world)
    assert seconds < LIMIT_S


# ---------------------------------------------------------------------------- loops: bounded, each file once
def test_predict_and_eval_walk_symlink_loops_once(world: Path, capsys, tmp_path):
    """A folder with a directory loop, a self-link and a link back to the top: each of the 6 real images is
    classified once, and ``cvt eval`` counts 6 (the issue saw 41 and 43, or a hang)."""
    import json

    code, seconds = _run_bounded(
        ["predict", str(world / "images"), "--weights", str(world / "tiny.safetensors"), "--format", "json"]
    )
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and seconds < LIMIT_S
    paths = [os.path.realpath(r["path"]) for r in records]
    assert len(paths) == 6 and len(set(paths)) == 6

    code, _ = _run_bounded(
        [
            "eval",
            str(world / "images"),
            "--weights",
            str(world / "tiny.safetensors"),
            "--output",
            str(tmp_path / "r.json"),
        ]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and report["n"] == 6
    assert set(report["per_class"]) == set(LABELS)  # mapped by name


def test_symlinked_destination_is_written_through(world: Path, tmp_path, capsys):
    """``--output LINK``: the link stays a link and the file it points to is replaced (the documented rule)."""
    target = tmp_path / "real.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    os.symlink(target, link)
    code, _ = _run_bounded(
        [
            "predict",
            str(world / "images" / "cat"),
            "--weights",
            str(world / "tiny.safetensors"),
            "--format",
            "json",
            "--output",
            str(link),
        ]
    )
    assert code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("[")
    assert not temp_files(tmp_path)


# ---------------------------------------------------------------------------- a full disk, in its own process
FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (__LIMIT__, __LIMIT__))
from cvt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verb", ["convert", "predict-output", "eval-output"])
def test_full_disk_is_one_line_and_leaves_nothing(world: Path, tmp_path, verb):
    """``RLIMIT_FSIZE`` makes every write past 256 bytes fail as a full disk would (EFBIG): one line naming the
    destination and the reason, exit 1, the old file unchanged, no temp file."""
    dest = tmp_path / ("out.safetensors" if verb == "convert" else "report.json")
    dest.write_text("old\n")
    args = {
        "convert": ["convert", str(world / "tiny.safetensors"), str(dest), "--to", "native", "--force"],
        "predict-output": [
            "predict",
            str(world / "images"),
            "--weights",
            str(world / "tiny.safetensors"),
            "--output",
            str(dest),
        ],
        "eval-output": [
            "eval",
            str(world / "images"),
            "--weights",
            str(world / "tiny.safetensors"),
            "--output",
            str(dest),
        ],
    }[verb]
    code = FULL_DISK.replace("__LIMIT__", "256")  # smaller than any of the three outputs
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and str(dest) in lines[0] and "file-size limit or full disk" in lines[0], lines
    assert dest.read_text() == "old\n"
    assert not temp_files(tmp_path)

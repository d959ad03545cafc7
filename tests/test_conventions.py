"""Conventions users of Unix tools and Python libraries expect: a quiet exit on a closed pipe, library messages
through ``logging`` (the CLI still prints them), and Flax models built from weights without running initialisers."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.cli import main
from cvt.train.config import load_config
from cvt.train.trainer import setup
from test_train_config import _folder, _recipe_file

SRC = Path(cvt.__file__).resolve().parent


# ---------------------------------------------------------------------------- closed pipes
def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``cvt list --json | head -1`` through a real pipe: the first line, nothing on stderr, status 0."""
    cvt_cmd = subprocess.Popen(
        [sys.executable, "-m", "cvt", "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    head = subprocess.run(["head", "-1"], stdin=cvt_cmd.stdout, capture_output=True, text=True, timeout=120)
    cvt_cmd.stdout.close()
    assert head.stdout == "[\n"
    assert cvt_cmd.wait(timeout=120) == 0 and cvt_cmd.stderr.read() == b""


@pytest.mark.parametrize("argv", [["list", "--json"], ["list"], ["--help"]])
def test_writing_to_a_pipe_closed_before_any_output(argv):
    """The reader is gone before the first byte (every write fails with EPIPE): no message, status 0, and no
    'Exception ignored ... BrokenPipeError' from the interpreter's final flush."""
    proc = subprocess.Popen([sys.executable, "-m", "cvt", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == b""


# ---------------------------------------------------------------------------- library messages
def _data_with_an_empty_class(tmp_path: Path) -> Path:
    root = tmp_path / "d"
    _folder(root, "train", ["cat", "dog"])
    _folder(root, "val", ["cat", "dog"])
    (root / "train" / "emu").mkdir()
    return _recipe_file(tmp_path, data={"kind": "folder", "root": str(root), "batch_size": 2})


def test_training_warnings_go_through_logging_and_the_cli_still_prints_them(tmp_path, capsys, caplog):
    recipe = _data_with_an_empty_class(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cvt"):
        setup(
            load_config(recipe, overrides=["data.max_train_samples=null"]),
            out=tmp_path / "run",
            echo=lambda s: None,
            dry_run=True,
        )
    records = [r for r in caplog.records if r.name.startswith("cvt.")]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert records[0].getMessage() == "warning: data.root: class folders with no images skipped: train/emu"
    assert capsys.readouterr().err == ""  # the library printed nothing itself
    # silenced by the caller: nothing anywhere
    caplog.clear()
    logging.getLogger("cvt").setLevel(logging.ERROR)
    try:
        setup(
            load_config(recipe, overrides=["data.max_train_samples=null"]),
            out=tmp_path / "run",
            echo=lambda s: None,
            dry_run=True,
        )
    finally:
        logging.getLogger("cvt").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name.startswith("cvt.")] and capsys.readouterr().err == ""
    # the command line: the same one line on stderr, once (not also through the root logger)
    assert main(["train", "--config", str(recipe), "--dry-run", "--set", "data.max_train_samples=null"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: data.root: class folders with no images skipped: train/emu"]


# every place library code may still write to stderr itself, and why
STDERR_ALLOWED = {
    "cli.py": "the command line",
    "commands": "the command line",
    "train/loop.py": "the progress bar (a TTY only)",
}


def _writes_to_stderr(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, ast.Call) else ""
        if (text.startswith("print(") and "file=sys.stderr" in text) or text.startswith("sys.stderr.write("):
            lines.append(node.lineno)
    return lines


def test_library_code_does_not_print_to_stderr():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if any(rel == key or rel.startswith(key + "/") for key in STDERR_ALLOWED):
            continue
        lines = _writes_to_stderr(ast.parse(path.read_text(), str(path)))
        if lines:
            found[rel] = lines
    assert found == {}


# ---------------------------------------------------------------------------- Flax: abstract build from weights
@pytest.mark.flax
def test_flax_weights_build_runs_no_initialiser(tmp_path, monkeypatch):
    """create_model(weights=...) draws no concrete random key (every initialiser only traced, abstractly), holds
    exactly the file's arrays (so equals the old random-init-then-fill path), and matches PyTorch's logits."""
    pytest.importorskip("flax")
    import jax
    from flax.nnx import rnglib

    import cvt.flax as cf
    from cvt.flax.weights import state_dict
    from cvt.torch.weights import save_native

    torch.manual_seed(0)
    tm = randomize_norms(cvt.create_model("cvt-tiny")).eval()
    path = save_native(tm.state_dict(), tm.config, tmp_path / "tiny.safetensors")

    # per key drawn from the "params" streams: was it concrete (an initialiser really ran)? (the dropout streams are
    # reseeded for real after the build: they are the model's RNG state, not an initialiser)
    keys: list[bool] = []
    draw = rnglib.RngStream.__call__

    def recording(self):
        key = draw(self)
        if self.tag == "params":
            keys.append(not isinstance(key, jax.core.Tracer))
        return key

    monkeypatch.setattr(rnglib.RngStream, "__call__", recording)
    fm = cf.create_model(weights=path)
    monkeypatch.undo()
    assert keys and not any(keys), f"{sum(keys)} of {len(keys)} keys were concrete"

    got = state_dict(fm)
    want = {k: v.numpy() for k, v in tm.state_dict().items()}
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        flax_logits = np.asarray(cf.jit_forward(fm)(x))
    with torch.no_grad():
        torch_logits = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=0, atol=1e-5)

"""``torchrun --nproc_per_node 2 -m cvt train`` on this CPU (gloo) equals one process with the same global batch.

BatchNorm is the one thing that cannot match: each process normalises with the statistics of its own half
of the batch, one process with those of the whole batch (and SyncBatchNorm, which would fix that, exists
for CUDA only). So the equality test uses a model without BatchNorm (``avg`` key/value projections) and no
drop path; everything else -- the data each step sees, augmentation, gradient averaging, LR schedule,
evaluation sums -- must agree to rounding. A second test runs the standard ``dw_bn`` model and only checks
that it trains and that rank 0 alone wrote the run directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cvt
from conftest import TINY_SPEC, tiny_recipe
from cvt.train import fit
from cvt.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(recipe: dict, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(Path(cvt.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "cvt",
        "train",
        "--config",
        str(path),
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    spec = json.loads(json.dumps(TINY_SPEC))
    for s in spec["stages"]:
        s.update(qkv_proj_method="avg", drop_path_rate=0.0)
    common = dict(
        model={"spec": spec}, schedule={"epochs": 2, "warmup_epochs": 1}, augment={"random_erasing": 0.25}
    )  # per-sample randomness must not depend on the process
    single = fit(tiny_recipe(tmp_path / "one", **common), echo=lambda s: None)
    res = _torchrun(tiny_recipe(tmp_path / "two", **common), tmp_path, "two")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout and res.stdout.count("validation top-1: final") == 1  # rank 0 prints
    got = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(got) == len(single.history) == 2
    for a, b in zip(single.history, got):
        assert a["step"] == b["step"] and a["val_images"] == b["val_images"] == 64
        for k in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    w1 = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k


@pytest.mark.slow
def test_batchnorm_model_trains_under_torchrun(tmp_path):
    res = _torchrun(tiny_recipe(tmp_path / "run", schedule={"epochs": 1, "warmup_epochs": 0}), tmp_path, "bn")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and 0 <= summary["best_val_top1"] <= 1
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["best.pt", "last.pt"]

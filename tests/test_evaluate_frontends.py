"""``cvt.keras.evaluate`` and ``cvt.flax.evaluate``: an image folder scored by class name, the same top-1 as
``cvt eval`` on the same weights.

The reference side (torch) writes a randomised 3-class ``cvt-tiny`` (labels cat/dog/fox, 32-pixel squash
preprocessing) as native safetensors and image folders whose classes are a subset of the model's, in another order
(so a by-position mapping would score differently), plus one corrupt file. ``cvt eval`` scores them; Flax runs
here; Keras runs in one subprocess with torch made unimportable (the pattern of ``tests/test_keras.py``), under
Keras' default backend unless ``KERAS_BACKEND`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_keras import _BLOCK_TORCH  # the subprocess's import guard: torch cannot be imported there

TESTS = Path(__file__).parent
LABELS = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Weights, folders and what ``cvt eval`` reports on them."""
    import torch

    import cvt
    from conftest import randomize_norms
    from cvt.cli import main
    from cvt.torch.weights import save_native

    root = tmp_path_factory.mktemp("frontends")
    torch.manual_seed(3)
    model = randomize_norms(cvt.create_model("cvt-tiny", num_classes=3), seed=3).eval()
    with torch.no_grad():  # a head that tells images apart, so top-1 is neither 0 nor 1 by accident
        model.head.weight.normal_(0.0, 2.0)
    spec = cvt.PretrainedSpec(cvt.EvalPreprocess(img_size=32, crop_pct=1.0), labels=LABELS)
    weights = save_native(model.state_dict(), model.config, root / "pets.safetensors", spec)
    rng = np.random.default_rng(0)
    for name in ("fox", "dog"):  # class 2 and class 1: sorted position would say 1 and 0
        (root / "pets" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(24 + 3 * i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "pets" / name / f"{i}.png")
    (root / "pets" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    for name in ("dog", "wolf"):
        (root / "zoo" / name).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(root / "zoo" / name / "0.png")
    report = root / "report.json"
    argv = ["eval", str(root / "pets"), "--weights", str(weights), "--workers", "0", "--output", str(report)]
    assert main(argv) == 1  # the corrupt file is reported
    zoo_error = _cli_error(main, ["eval", str(root / "zoo"), "--weights", str(weights), "--workers", "0"])
    return {"root": str(root), "weights": str(weights), "report": json.loads(report.read_text()), "zoo": zoo_error}


def _cli_error(main, argv: list[str]) -> str:
    """The message of ``cvt eval``'s one error line."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 1
    (line,) = err.getvalue().strip().splitlines()
    return line.removeprefix("cvt eval: error: ")


def _check(score: dict, world: dict) -> None:
    report = world["report"]
    assert 0 < report["top1"] < 1 and report["class_mapping"] == "labels" and report["n"] == 8
    assert score["top1"] == report["top1"] and score["top5"] == report["top5"] and score["n"] == report["n"]
    assert score["rule"] == "labels" and score["mapping"] == {"fox": 2, "dog": 1} and score["skipped"] == 1
    assert score["zoo"] == world["zoo"]  # not the model's classes: the same one-line error as cvt eval


def _score(evaluate, model, root: Path) -> dict:
    from cvt.core.errors import DataError

    score = evaluate(model, root / "pets", batch_size=8)
    try:
        evaluate(model, root / "zoo")
        zoo = "no error"
    except DataError as e:
        zoo = str(e)
    return {
        "top1": score.top1,
        "top5": score.top5,
        "n": score.n,
        "rule": score.mapping.rule,
        "mapping": dict(score.mapping),
        "skipped": len(score.skipped),
        "zoo": zoo,
    }


@pytest.mark.flax
def test_a_flax_model_evaluates_a_folder_by_class_name(world):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    from cvt import flax as cf
    from cvt.flax.layers import BatchNorm

    model = cf.create_model(weights=world["weights"])
    model.train()  # evaluate scores an eval-mode view and leaves the caller's model in training mode
    _check(_score(cf.evaluate, model, Path(world["root"])), world)
    norms = [m for _, m in model.iter_modules() if isinstance(m, BatchNorm)]
    assert norms and not any(m.use_running_average for m in norms)


# ---------------------------------------------------------------------------- Keras, in a subprocess without torch
def keras_worker(root: str, weights: str) -> None:
    """Runs in the subprocess: score the folders with ``cvt.keras.evaluate``; print the numbers as JSON."""
    import cvt.keras as ck

    model = ck.create_model(weights=weights)
    print(json.dumps({**_score(ck.evaluate, model, Path(root)), "torch_imported": "torch" in sys.modules}))


@pytest.mark.keras
@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_a_keras_model_evaluates_a_folder_by_class_name(world):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(TESTS)}
    code = _BLOCK_TORCH + f"import {Path(__file__).stem} as t; t.keras_worker({world['root']!r}, {world['weights']!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    score = json.loads(proc.stdout.strip().splitlines()[-1])
    assert score.pop("torch_imported") is False
    _check(score, world)

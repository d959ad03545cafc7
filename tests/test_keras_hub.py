"""keras-hub conventions of ``cvt.keras``: presets, ``from_preset`` keywords, ``pyramid_outputs``, raw pixels, the
preprocessor's layouts, and the one-line error when Keras has no backend.

The reference side (torch) writes a randomised ``cvt-tiny`` as native safetensors plus inputs; ONE Keras subprocess
(JAX backend, torch unimportable: the pattern of ``tests/test_keras.py``) does every Keras-side task and writes its
numbers and a preset back; the tests compare, and PyTorch loads the Keras preset here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_keras import _BLOCK_TORCH

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed"),
]
TESTS = Path(__file__).parent
TOL = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    import torch

    import cvt
    from conftest import randomize_norms
    from cvt.core.weights import save_native_arrays

    root = tmp_path_factory.mktemp("keras_hub")
    torch.manual_seed(0)
    model = randomize_norms(cvt.create_model("cvt-tiny"), seed=0).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    spec = cvt.PretrainedSpec(cvt.EvalPreprocess(img_size=64), labels=tuple(f"c{i}" for i in range(10)))
    save_native_arrays(sd, model.config, root / "tiny.safetensors", spec)
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", rng.standard_normal((2, 64, 64, 3)).astype(np.float32))  # NHWC
    np.save(root / "pixels.npy", rng.integers(0, 256, (2, 75, 90, 3), dtype=np.uint8))  # raw HWC photos
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(TESTS)}
    code = _BLOCK_TORCH + f"import test_keras_hub; test_keras_hub.worker({str(root)!r}, {str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "out": out, "res": json.loads((out / "results.json").read_text())}


# ---------------------------------------------------------------------------- worker side (Keras on JAX, no torch)
def worker(root: str, out: str) -> None:
    results: dict = {}
    for name, task in (("preset", task_preset), ("pixels", task_pixels), ("layouts", task_layouts)):
        try:
            results[name] = task(Path(root), Path(out))
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
    results["torch_imported"] = "torch" in sys.modules
    (Path(out) / "results.json").write_text(json.dumps(results))


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=len(x), verbose=0))


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:  # the message and the type are what the tests check
        return f"{type(e).__name__}: {e}"
    return "no error"


def task_preset(root: Path, out: Path) -> dict:
    import keras

    import cvt.keras as ck

    x = np.load(root / "x.npy")
    model = ck.create_model(weights=root / "tiny.safetensors")
    ref = _predict(model, x)
    np.save(out / "keras_y.npy", ref)
    model.save_to_preset(out / "preset")
    again = ck.CvTImageClassifier.from_preset(out / "preset")
    fresh = ck.from_preset(out / "preset", load_weights=False)
    bf16 = ck.from_preset(out / "preset", dtype="bfloat16")
    mixed = ck.from_preset(out / "preset", dtype="mixed_bfloat16")
    model.backbone.save_to_preset(out / "backbone_preset")
    backbone = ck.CvTBackbone.from_preset(out / "backbone_preset")
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs).predict(x, verbose=0)
    feats = model.backbone.predict(x, verbose=0)
    on_backbone = ck.from_preset(out / "backbone_preset")  # a classifier on a backbone preset: fresh norm + head
    return {
        "files": sorted(os.listdir(out / "preset")),
        "backbone_files": sorted(os.listdir(out / "backbone_preset")),
        "config": json.loads((out / "preset" / "config.json").read_text())["registered_name"],
        "metadata": json.loads((out / "preset" / "metadata.json").read_text()),
        "round_trip": float(np.abs(_predict(again, x) - ref).max()),
        "spec_labels": list(again.pretrained_cfg.labels.names),
        "has_preprocessor": again.preprocessor is not None,
        "unloaded": float(np.abs(_predict(fresh, x) - ref).max()),
        "unloaded_labels": list(fresh.pretrained_cfg.labels.names),
        "bf16": [bf16.backbone.stages[0].dtype_policy.name, str(bf16.backbone.stages[0].variables[0].dtype)],
        "bf16_diff": float(np.abs(_predict(bf16, x) - ref).max()),
        "bf16_out": str(_predict(bf16, x).dtype),
        "mixed": [mixed.backbone.stages[0].dtype_policy.name, str(mixed.backbone.stages[0].variables[0].dtype)],
        "mixed_diff": float(np.abs(_predict(mixed, x) - ref).max()),
        "scale": float(np.abs(ref).max()),
        "pyramid": {k: list(v.shape) for k, v in pyramid.items()},
        "pyramid_equal": all(np.array_equal(pyramid[p], feats[s]) for p, s in (("P2", "stage0"), ("P4", "stage2"))),
        "backbone_stage_diff": float(np.abs(backbone.predict(x, verbose=0)["stage2"] - feats["stage2"]).max()),
        "on_backbone_notes": on_backbone.load_report.notes,
        "unknown_kwarg": _error(lambda: ck.from_preset(out / "preset", foo=1)),
        "unknown_backbone_kwarg": _error(lambda: ck.CvTBackbone.from_preset(out / "preset", num_classes=3)),
        "bad_dtype": _error(lambda: ck.from_preset(out / "preset", dtype="float13")),
        "unknown_create_kwarg": _error(lambda: ck.create_model("cvt-tiny", drop_rat=0.1)),
    }


def task_pixels(root: Path, out: Path) -> dict:
    import cvt.keras as ck

    pixels = np.load(root / "pixels.npy")
    model = ck.from_preset(out / "preset")
    ready = model.preprocessor(pixels)
    ref = _predict(model, ready)
    bare = ck.from_preset(out / "preset")
    bare.preprocessor = None
    return {
        "predict": float(np.abs(_predict(model, pixels) - ref).max()),
        "predict_on_batch": float(np.abs(np.asarray(model.predict_on_batch(pixels)) - ref).max()),
        "eager": float(np.abs(np.asarray(model(pixels, training=False)) - ref).max()),
        "refused_predict": _error(lambda: bare.predict(pixels, verbose=0)),
        "refused_call": _error(lambda: bare(pixels)),
        "refused_batch": _error(lambda: bare.predict_on_batch(pixels)),
    }


def task_layouts(root: Path, out: Path) -> dict:
    """TF and JAX images (HWC) and batches through the preprocessor == the core's EvalTransform on the PIL image."""
    import jax.numpy as jnp
    import tensorflow as tf

    import cvt.keras as ck
    from cvt.core.preprocess import EvalTransform
    from cvt.core.spec import EvalPreprocess

    pixels = np.load(root / "pixels.npy")
    pre = ck.CvTImagePreprocessor(EvalPreprocess(img_size=64), data_format="channels_last")
    want = np.stack([EvalTransform(pre.preprocess)(Image.fromarray(p)).transpose(1, 2, 0) for p in pixels])
    as_float = pixels.astype(np.float32) / np.float32(255.0)  # x / 255: floats in [0, 1] come back exactly
    again = ck.CvTImagePreprocessor.from_config(pre.get_config())
    return {
        "tf_image": bool(np.array_equal(pre(tf.constant(pixels[0]))[0], want[0])),
        "tf_batch": bool(np.array_equal(pre(tf.constant(pixels)), want)),
        "jax_batch": bool(np.array_equal(pre(jnp.asarray(pixels)), want)),
        "list": bool(np.array_equal(pre([tf.constant(p) for p in pixels]), want)),
        "tf_float": bool(np.array_equal(pre(tf.constant(as_float)), want)),
        "config": again.get_config() == pre.get_config(),
        "bad_float": _error(lambda: pre(tf.constant(pixels.astype(np.float32)))),
        "chw_numpy": _error(lambda: pre(pixels[0].transpose(2, 0, 1))),
    }


# ---------------------------------------------------------------------------- tests
def _ok(world: dict, task: str) -> dict:
    res = world["res"][task]
    assert "error" not in res, res["error"]
    return res


def _one_line(text: str) -> None:
    assert text != "no error" and "\n" not in text, text


def test_preset_round_trip_exact(world):
    res = _ok(world, "preset")
    assert res["files"] == sorted(
        ["config.json", "metadata.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json"]
    )
    assert res["backbone_files"] == ["config.json", "metadata.json", "model.weights.h5"]
    assert res["config"] == "cvt>CvTBackbone"
    meta = res["metadata"]
    assert meta["tasks"] == ["ImageClassifier"] and meta["keras_version"] and meta["cvt_version"]
    assert meta["parameter_count"] > 100_000 and "date_saved" in meta
    assert res["round_trip"] == 0.0
    assert res["spec_labels"][:2] == ["c0", "c1"] and res["has_preprocessor"]
    assert world["res"]["torch_imported"] is False


def test_load_weights_false_and_dtype(world):
    res = _ok(world, "preset")
    assert res["unloaded"] > 1e-3 and res["unloaded_labels"][:1] == ["c0"]  # architecture + spec, fresh weights
    assert res["bf16"] == ["bfloat16", "bfloat16"] and res["bf16_out"] == "float32"
    assert res["mixed"] == ["mixed_bfloat16", "float32"]
    for key in ("bf16_diff", "mixed_diff"):
        assert 0 < res[key] <= 0.05 * res["scale"] + 0.05, (key, res[key])


def test_unknown_keywords_are_one_line(world):
    res = _ok(world, "preset")
    for key in ("unknown_kwarg", "unknown_backbone_kwarg", "bad_dtype", "unknown_create_kwarg"):
        _one_line(res[key])
    assert res["unknown_kwarg"].startswith("UsageError: cvt.keras.from_preset: unknown keyword argument 'foo'")
    assert "accepted: " in res["unknown_kwarg"] and "load_weights" in res["unknown_kwarg"]
    assert "'num_classes'" in res["unknown_backbone_kwarg"] and "'drop_rat'" in res["unknown_create_kwarg"]
    assert "float13" in res["bad_dtype"]


def test_pyramid_outputs(world):
    res = _ok(world, "preset")
    assert res["pyramid"] == {"P2": [2, 16, 16, 16], "P3": [2, 8, 8, 32], "P4": [2, 4, 4, 48]}
    assert res["pyramid_equal"] and res["backbone_stage_diff"] == 0.0
    assert res["on_backbone_notes"] == ["fresh final norm and head: the weights hold a backbone only"]


def test_torch_loads_the_keras_preset(world):
    import torch

    import cvt
    from cvt.core.weights import read_arrays

    _ok(world, "preset")
    preset = world["out"] / "preset"
    loaded = read_arrays(preset)
    assert loaded.described_by == "native" and loaded.spec.labels.names[0] == "c0"
    model = cvt.create_model(weights=preset).eval()
    x = torch.from_numpy(np.load(world["root"] / "x.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = model(x).numpy()
    assert np.abs(y - np.load(world["out"] / "keras_y.npy")).max() <= TOL


def test_raw_pixels_are_preprocessed_or_refused(world):
    res = _ok(world, "pixels")
    assert res["predict"] == 0.0 and res["predict_on_batch"] <= TOL and res["eager"] <= TOL
    for key in ("refused_predict", "refused_call", "refused_batch"):
        _one_line(res[key])
        assert res[key].startswith("UsageError") and "no preprocessor" in res[key], res[key]


def test_preprocessor_layouts(world):
    res = _ok(world, "layouts")
    assert res["tf_image"] and res["tf_batch"] and res["jax_batch"] and res["list"] and res["tf_float"]
    assert res["config"]
    _one_line(res["bad_float"])
    assert "must be in [0, 1]" in res["bad_float"]
    assert "channels-first" in res["chw_numpy"] and "(C, H, W) for torch" in res["chw_numpy"]


def test_to_pil_layout_by_library():
    """torch tensors are CHW, numpy HWC, by the producing library, even when the shape fits both."""
    import torch

    from cvt.core.errors import ImageError
    from cvt.core.images import to_pil

    arr = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)  # (H=3, W=4, C=3): ambiguous shape
    assert np.array_equal(np.asarray(to_pil(arr)), arr)
    assert np.array_equal(np.asarray(to_pil(torch.from_numpy(arr).permute(2, 0, 1))), arr)
    assert np.array_equal(np.asarray(to_pil(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)), arr)
    with pytest.raises(ImageError, match=r"float pixels must be in \[0, 1\]"):
        to_pil(torch.full((3, 4, 4), 2.0))


@pytest.mark.parametrize("backend", ["unset", "bogus"])
def test_no_usable_keras_backend_is_one_line(tmp_path, backend):
    """tensorflow made unimportable: Keras' default backend (or a misspelt one) -> one ImportError line."""
    block = _BLOCK_TORCH.replace('"torch"', '"tensorflow"')
    code = block + (
        "\ntry:\n    import cvt.keras\nexcept ImportError as e:\n"
        "    print(type(e).__name__, isinstance(e, ImportError), '|', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    if backend == "bogus":
        env["KERAS_BACKEND"] = "bogus"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]
    line = lines[0]
    assert line.startswith("KerasBackendError True | cvt.keras: Keras cannot load its backend"), line
    assert "KERAS_BACKEND" in line and "installed frameworks: jax, torch" in line and "set KERAS_BACKEND=jax" in line
    assert ("'tensorflow'" if backend == "unset" else "'bogus'") in line

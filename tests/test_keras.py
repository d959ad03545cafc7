"""The Keras 3 CvT (``cvt.keras``) against cvt-torch and HF transformers, on the TensorFlow and JAX backends.

The reference side runs here (torch, transformers): it builds models with random weights (BatchNorm statistics and
LayerNorm affines randomised), writes them as native safetensors / an HF directory / a TF-port ``.h5``, and keeps
inputs and logits. Each Keras backend then runs ONE subprocess (``KERAS_BACKEND``; torch made unimportable in it)
that does every Keras-side task of this file and writes its numbers back; the tests compare. No downloads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed"),
]

TOL = 1e-5
TESTS = Path(__file__).parent

# Runs first in the worker: the import system refuses torch, so every Keras path proves it needs none.
_BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoTorch())
"""

# (case name, projection method, input shape NCHW, extra model kwargs)
PARITY = [
    ("dw_bn_224_b2", "dw_bn", (2, 3, 224, 224), {}),
    ("dw_bn_224_b1", "dw_bn", (1, 3, 224, 224), {}),
    ("dw_bn_384_b1", "dw_bn", (1, 3, 384, 384), {}),
    ("dw_bn_96x160", "dw_bn", (2, 3, 96, 160), {}),
    ("dw_bn_96x160_nchw", "dw_bn", (2, 3, 96, 160), {"data_format": "channels_first"}),
    ("avg_224_b2", "avg", (2, 3, 224, 224), {}),
    ("avg_72x104", "avg", (2, 3, 72, 104), {}),
    ("linear_224_b2", "linear", (2, 3, 224, 224), {}),
    ("linear_64x96", "linear", (1, 3, 64, 96), {}),
    ("nocls_avg_80x64", "nocls", (2, 3, 80, 64), {}),
    ("avg_s3_70x91", "avg_s3", (1, 3, 70, 91), {}),  # PyTorch drops a last ceil-mode window (sized on traced shapes)
]
# also run under tf.function(jit_compile=True) on TensorFlow (depthwise as shifted slices; JAX always compiles)
XLA_TOO = ("dw_bn_224_b2", "dw_bn_96x160")


# ---------------------------------------------------------------------------- reference side (torch)
def _tiny(method: str, drop_path: bool = True):
    """cvt-tiny with another projection method (``nocls``: dw_bn, no cls token, mean pooling; ``avg_s3``: avg with
    ``stride_kv=3``, where a last ceil-mode window can start inside the padding)."""
    from cvt.core import get_config

    cfg = get_config("cvt-tiny")
    stages = []
    for s in cfg.stages:
        change = {"qkv_proj_method": {"nocls": "dw_bn", "avg_s3": "avg"}.get(method, method)}
        if method == "avg_s3":
            change["stride_kv"] = 3
        if method == "nocls":
            change["cls_token"] = False
        if not drop_path:
            change["drop_path_rate"] = 0.0
        stages.append(dataclasses.replace(s, **change))
    return cfg.replace(stages=tuple(stages))


def _numpy_sd(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def write_port_h5(sd: dict[str, np.ndarray], path: Path) -> Path:
    """A ``.h5`` in cvt-tensorflow's ``save_weights`` layout (frameworks.md section 4) from a native state dict."""
    import h5py

    from cvt.core.keys import convert_state_dict

    official = convert_state_dict(sd, "native", "official")
    conv_id = iter(range(10_000))
    with h5py.File(path, "w") as f:
        tops = []
        for key, arr in official.items():
            *inner, leaf = key.split(".")
            if leaf == "num_batches_tracked":
                continue
            top = inner[0]
            is_bn = "bn" in inner
            is_ln = inner[-1].startswith("norm")
            if leaf == "weight" and arr.ndim == 4:  # conv: HWIO, under an automatic conv2d_N name
                inner, leaf, arr = [*inner, f"conv2d_{next(conv_id)}"], "kernel", arr.transpose(2, 3, 1, 0)
            elif leaf == "weight" and arr.ndim == 2:
                leaf, arr = "kernel", arr.T
            elif leaf in ("weight", "bias") and (is_bn or is_ln):
                leaf = "gamma" if leaf == "weight" else "beta"
            elif leaf == "bias" and "proj" in inner[-1] and "patch_embed" in inner:
                inner = [*inner, f"conv2d_{next(conv_id) - 1}"]
            leaf = {"running_mean": "moving_mean", "running_var": "moving_variance"}.get(leaf, leaf)
            f.create_dataset("/".join([top, top, *inner[1:], leaf + ":0"]), data=arr)
            if top not in tops:
                tops.append(top)
        f.attrs["layer_names"] = [t.encode() for t in tops]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.9.0"
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Reference models, inputs and outputs on disk, and the job description the workers read."""
    import torch

    import cvt
    from conftest import TINY_HF, hf_model, randomize_norms
    from cvt.core.weights import save_native_arrays

    root = tmp_path_factory.mktemp("keras")
    g = torch.Generator().manual_seed(0)
    job: dict = {"root": str(root), "parity": [], "tol": TOL}
    weights = {}
    for i, method in enumerate(("dw_bn", "avg", "linear", "nocls", "avg_s3")):
        torch.manual_seed(i)
        cfg = _tiny(method)
        model = randomize_norms(cvt.create_model(cfg), seed=i).eval()
        weights[method] = (model, save_native_arrays(_numpy_sd(model), cfg, root / f"{method}.safetensors"))
    for name, method, shape, kwargs in PARITY:
        model, path = weights[method]
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            y = model(x)
        np.save(root / f"{name}_x.npy", x.numpy())
        np.save(root / f"{name}_y.npy", y.numpy())
        job["parity"].append({"name": name, "weights": str(path), "kwargs": kwargs})

    # activation="gelu" against HF's CvT, from an HF directory
    torch.manual_seed(5)
    hf = hf_model(**TINY_HF)
    hf.save_pretrained(root / "hf")
    x = torch.randn((2, 3, 96, 96), generator=g)
    with torch.no_grad():
        np.save(root / "hf_y.npy", hf(pixel_values=x).logits.numpy())
    np.save(root / "hf_x.npy", x.numpy())

    # the TF port's .h5 (from the dw_bn model), a truncated copy, a foreign HDF5, a torch pickle
    write_port_h5(_numpy_sd(weights["dw_bn"][0]), root / "port.h5")
    data = (root / "port.h5").read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    import h5py

    with h5py.File(root / "foreign.h5", "w") as f:
        f.create_dataset("dense_1/dense_1/kernel:0", data=np.zeros((3, 4), np.float32))
    torch.save(weights["dw_bn"][0].state_dict(), root / "official.pth")

    # one training-mode forward: BatchNorm running statistics after it (PyTorch momentum, unbiased variance)
    cfg = _tiny("dw_bn", drop_path=False)
    torch.manual_seed(7)
    model = randomize_norms(cvt.create_model(cfg), seed=7)
    save_native_arrays(_numpy_sd(model), cfg, root / "bn_before.safetensors")
    x = torch.randn((4, 3, 64, 64), generator=g)
    model.train()
    with torch.no_grad():
        model(x)
    np.save(root / "bn_x.npy", x.numpy())
    np.savez(root / "bn_after.npz", **{k: v for k, v in _numpy_sd(model).items() if "running" in k})
    (root / "job.json").write_text(json.dumps(job))
    return job


def _run_worker(job: dict, backend: str, tasks: str) -> dict:
    out = Path(job["root"]) / f"out_{backend}_{tasks.replace(',', '_')}"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(TESTS)}
    block = _BLOCK_TORCH if backend != "torch" else ""  # Keras' torch backend is torch
    code = block + f"import test_keras; test_keras.worker({job['root']!r}, {str(out)!r}, {tasks!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads((out / "results.json").read_text()), "out": str(out)}


@pytest.fixture(scope="module")
def tf_run(job):
    return _run_worker(job, "tensorflow", "parity,weights,train,export")


@pytest.fixture(scope="module")
def jax_run(job):
    return _run_worker(job, "jax", "parity,weights,train")  # train: BatchNorm statistics only


@pytest.fixture(params=["tensorflow", "jax"])
def run(request):
    return request.getfixturevalue("tf_run" if request.param == "tensorflow" else "jax_run")


def _ok(result: dict, task: str) -> dict:
    assert task in result, f"task {task} did not run"
    assert "error" not in result[task], result[task].get("error")
    return result[task]


# ---------------------------------------------------------------------------- worker side (Keras, no torch)
def worker(root: str, out: str, tasks: str) -> None:
    """Every Keras-side check of this file, in one process per backend; writes ``results.json`` into ``out``."""
    import keras

    job = json.loads((Path(root) / "job.json").read_text())
    results: dict = {"backend": keras.backend.backend()}
    for task in tasks.split(","):
        for name, fn in _TASKS[task]:
            t0 = time.perf_counter()
            try:
                results[name] = fn(Path(root), Path(out), job)
            except Exception:
                results[name] = {"error": traceback.format_exc()[-3000:]}
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    results["torch_imported"] = "torch" in sys.modules
    (Path(out) / "results.json").write_text(json.dumps(results))


def _predict(model, x: np.ndarray) -> np.ndarray:
    """Inference: eager on TensorFlow (no compile per shape); jit-compiled ``predict`` on JAX (eager is slower)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return keras.ops.convert_to_numpy(model(x, training=False))
    return np.asarray(model.predict(x, batch_size=len(x), verbose=0))


def _train_forward(model, x: np.ndarray) -> None:
    """One training-mode forward pass that updates BatchNorm statistics (jit-compiled on JAX)."""
    import keras

    if keras.backend.backend() != "jax":
        model(x, training=True)
        return
    import jax

    step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=True)[1])
    new = step([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x)
    for var, value in zip(model.non_trainable_variables, new):
        var.assign(value)


def _nhwc(x: np.ndarray, model) -> np.ndarray:
    return x if model.backbone.data_format == "channels_first" else x.transpose(0, 2, 3, 1)


def task_parity(root: Path, out: Path, job: dict) -> dict:
    import keras

    import cvt.keras as ck

    diffs, models = {}, {}
    for case in job["parity"]:
        key = (case["weights"], json.dumps(case["kwargs"]))
        if key not in models:
            models[key] = ck.create_model(weights=case["weights"], **case["kwargs"])
        model = models[key]
        x, y = np.load(root / f"{case['name']}_x.npy"), np.load(root / f"{case['name']}_y.npy")
        diffs[case["name"]] = float(np.abs(_predict(model, _nhwc(x, model)) - y).max())
        if case["name"] in XLA_TOO and keras.backend.backend() == "tensorflow":  # the shifted-slice depthwise path
            import tensorflow as tf

            xla = tf.function(lambda t, m=model: m(t, training=False), jit_compile=True)
            diffs[case["name"] + "_xla"] = float(np.abs(xla(_nhwc(x, model)).numpy() - y).max())
    # the native names Keras derives from its attribute paths are the core's schema, shape for shape, for every
    # projection method, with and without a cls token (the models built above)
    from cvt.core.layouts import torch_shape
    from cvt.core.weights import expected_shapes

    schema = {}
    for (weights, _), model in models.items():
        got = {name: list(torch_shape(kind, var.shape)) for name, (var, kind) in ck.native_variables(model).items()}
        want = {name: list(shape) for name, shape in expected_shapes(model.cvt_config).items()}
        schema[Path(weights).stem] = schema.get(Path(weights).stem, True) and got == want  # NHWC and NCHW
    hf = ck.create_model(weights=root / "hf")  # an HF directory: activation "gelu" from its config
    diffs["hf_gelu"] = float(
        np.abs(_predict(hf, np.load(root / "hf_x.npy").transpose(0, 2, 3, 1)) - np.load(root / "hf_y.npy")).max()
    )
    return {
        "diffs": diffs,
        "hf_activation": hf.cvt_config.activation,
        "attention_weights": _attention_weights(),
        "schema": schema,
    }


def _attention_weights() -> float:
    """``Attention.attention_weights`` (the torch contract: weights through their own method), applied to v and
    projected, give the layer's output: the largest difference."""
    from keras import ops

    from cvt.keras.layers import Attention

    attn = Attention(12, 3, with_cls_token=True)
    x = np.random.default_rng(0).standard_normal((2, 1 + 4 * 5, 12)).astype(np.float32)
    attn.build(x.shape)
    weights = attn.attention_weights(x, 4, 5)  # (B, heads, 1 + 20, 1 + 2 * 3)
    _, _, v = attn.qkv(x, 4, 5)
    explicit = attn.proj(ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (2, 21, 12)))
    return float(np.abs(ops.convert_to_numpy(explicit) - ops.convert_to_numpy(attn(x, h=4, w=5))).max())


def task_weights(root: Path, out: Path, job: dict) -> dict:
    import keras

    import cvt.keras as ck
    from cvt.core.errors import CvtError

    res: dict = {}
    x = np.load(root / "dw_bn_96x160_x.npy").transpose(0, 2, 3, 1)
    y = np.load(root / "dw_bn_96x160_y.npy")
    port = ck.create_model(weights=root / "port.h5")
    res["port_h5"] = float(np.abs(_predict(port, x) - y).max())
    dropin = ck.CvT(spec=port.cvt_config.to_official_spec(), num_classes=10, weights=root / "port.h5")
    res["port_dropin"] = float(np.abs(_predict(dropin, x) - y).max())
    # a torch pickle, read by the core without torch (torch is unimportable in this worker)
    res["official_pth"] = float(np.abs(_predict(ck.create_model(weights=root / "official.pth"), x) - y).max())
    errors = {}
    for name in ("truncated.h5", "foreign.h5"):
        try:
            ck.create_model(weights=root / name)
            errors[name] = "no error"
        except CvtError as e:
            errors[name] = str(e)
    try:
        ck.CvT("cvt-13", pretrained=True, pretrained_resolution=224, pretrained_version="22k")
    except CvtError as e:
        errors["port_combo"] = str(e)
    res["errors"] = errors
    # save / reload: native safetensors (also read by the torch side), .keras, .weights.h5
    model = ck.create_model(weights=job["parity"][0]["weights"])
    ref = _predict(model, x)
    ck.save_native(model, out / "from_keras.safetensors")
    np.save(out / "from_keras_x.npy", x)
    np.save(out / "from_keras_y.npy", ref)
    again = ck.create_model(weights=out / "from_keras.safetensors")
    model.save(out / "model.keras")
    loaded = keras.saving.load_model(out / "model.keras")
    fresh = ck.create_model("cvt-tiny", activation="quick_gelu")
    model.save_weights(out / "model.weights.h5")
    fresh.load_weights(out / "model.weights.h5")
    res["reload"] = {
        "native": float(np.abs(_predict(again, x) - ref).max()),
        "keras": float(np.abs(_predict(loaded, x) - ref).max()),
        "weights_h5": float(np.abs(_predict(fresh, x) - ref).max()),
        "keras_type": type(loaded).__name__,
        "keras_spec": loaded.pretrained_cfg.to_dict() if loaded.pretrained_cfg else None,
    }
    try:
        ck.load_weights(fresh, out / "model.weights.h5")
    except CvtError as e:
        errors["keras3_h5"] = str(e)
    backbone = ck.CvTBackbone.from_config(model.backbone.get_config())
    feats = backbone.predict(x, verbose=0)
    res["backbone"] = {k: list(v.shape) for k, v in feats.items()}
    return res


def task_train(root: Path, out: Path, job: dict) -> dict:
    import keras

    import cvt.keras as ck

    res: dict = {}
    model = ck.create_model(weights=root / "bn_before.safetensors")
    _train_forward(model, np.load(root / "bn_x.npy").transpose(0, 2, 3, 1))
    ref = np.load(root / "bn_after.npz")
    sd = ck.state_dict(model)
    res["bn_diff"] = max(float(np.abs(sd[k] - ref[k]).max()) for k in ref.files)
    res["bn_count"] = len(ref.files)
    if keras.backend.backend() != "tensorflow":
        return res
    # a few fit steps on a learnable toy problem lower the loss; mixed precision trains and predicts
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    labels = (x[:, :16].mean(axis=(1, 2, 3)) > x[:, 16:].mean(axis=(1, 2, 3))).astype(np.int32)
    model = ck.create_model("cvt-tiny", num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)  # no XLA compile: time
    hist = model.fit(x, labels, batch_size=16, epochs=5, verbose=0)
    res["loss"] = [float(v) for v in hist.history["loss"]]
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mp = ck.create_model(weights=root / "bn_before.safetensors")
        mp.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
        out16 = _predict(mp, x[:4])
        loss = mp.fit(x, labels, batch_size=16, epochs=1, verbose=0).history["loss"]
    finally:
        keras.config.set_dtype_policy("float32")
    ref = _predict(ck.create_model(weights=root / "bn_before.safetensors"), x[:4])
    res["mixed"] = {
        "dtype": str(out16.dtype),
        "compute": mp.backbone.stages[0].compute_dtype,
        "loss_finite": bool(np.isfinite(loss).all()),
        "diff": float(np.abs(out16 - ref).max()),
        "scale": float(np.abs(ref).max()),
    }
    return res


def task_export(root: Path, out: Path, job: dict) -> dict:
    import tensorflow as tf

    import cvt.keras as ck
    from cvt.core import get_config

    cfg = get_config("cvt-tiny")
    cfg = cfg.replace(stages=tuple(dataclasses.replace(st, depth=1) for st in cfg.stages))  # quicker to trace
    model = ck.create_model(cfg)
    rng = np.random.default_rng(1)
    res: dict = {"saved_model": {}, "litert": {}}
    ck.export_saved_model(model, out / "saved")
    served = tf.saved_model.load(str(out / "saved"))
    ck.export_litert(model, out / "model.tflite")
    interp = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    ops = {d["op_name"] for d in interp._get_ops_details()}
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    for b in (1, 2, 5):
        x = rng.standard_normal((b, 64, 64, 3)).astype(np.float32)
        ref = _predict(model, x)
        res["saved_model"][b] = float(np.abs(served.serve(x).numpy() - ref).max())
        interp.resize_tensor_input(inp["index"], x.shape)
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        res["litert"][b] = float(np.abs(interp.get_tensor(outp["index"]) - ref).max())
    res["ops"] = sorted(ops)
    res["tflite_bytes"] = (out / "model.tflite").stat().st_size
    return res


def task_cvt13(root: Path, out: Path, job: dict) -> dict:
    import cvt.keras as ck

    model = ck.create_model(weights=root / "cvt13.safetensors")
    x = np.load(root / "cvt13_x.npy").transpose(0, 2, 3, 1)
    return {"diff": float(np.abs(_predict(model, x) - np.load(root / "cvt13_y.npy")).max())}


_TASKS = {
    "cvt13": [("cvt13", task_cvt13)],
    "parity": [("parity", task_parity)],
    "weights": [("weights", task_weights)],
    "train": [("train", task_train)],
    "export": [("export", task_export)],
}


# ---------------------------------------------------------------------------- tests
@pytest.mark.parity
def test_logits_equal_cvt_torch(run):
    """Same random weights: Keras logits equal cvt-torch's (dw_bn / avg / linear, 224 b1+b2, 384, non-square,
    channels_first, mean pooling) and HF's CvT with activation="gelu"."""
    res = _ok(run, "parity")
    assert len(res["diffs"]) == len(PARITY) + 1 + (len(XLA_TOO) if run["backend"] == "tensorflow" else 0)
    bad = {k: v for k, v in res["diffs"].items() if not v <= TOL}
    assert not bad, bad
    assert res["hf_activation"] == "gelu"
    assert res["attention_weights"] <= TOL
    assert run["torch_imported"] is False
    # native_variables (names from the attribute paths) == the core's expected_shapes, on every model above
    assert res["schema"] == {name: True for name in ("dw_bn", "avg", "linear", "nocls", "avg_s3")}


@pytest.mark.parity
def test_logits_equal_cvt_torch_on_the_keras_torch_backend(job):
    """The same table on Keras' third backend (eager)."""
    result = _run_worker(job, "torch", "parity")
    assert result["backend"] == "torch"
    res = _ok(result, "parity")
    bad = {k: v for k, v in res["diffs"].items() if not v <= TOL}
    assert len(res["diffs"]) == len(PARITY) + 1 and not bad, bad
    assert res["hf_activation"] == "gelu"
    assert set(res["schema"].values()) == {True}  # torch-backend layers keep sublayers in torch's _modules


def test_weight_files(run):
    res = _ok(run, "weights")
    assert res["port_h5"] <= TOL and res["port_dropin"] <= TOL and res["official_pth"] <= TOL
    assert all(v <= TOL for k, v in res["reload"].items() if k not in ("keras_type", "keras_spec")), res["reload"]
    assert res["reload"]["keras_type"] == "CvTImageClassifier"
    assert res["reload"]["keras_spec"]["preprocess"]["img_size"] == 64
    shapes = {"stage0": [2, 24, 40, 16], "stage1": [2, 12, 20, 32], "stage2": [2, 6, 10, 48], "cls_token": [2, 1, 48]}
    assert res["backbone"] == shapes
    errors = res["errors"]
    for name, text in errors.items():
        assert "\n" not in text and text != "no error", (name, text)
    assert "truncated" in errors["truncated.h5"] and "not a cvt-tensorflow weight file" in errors["foreign.h5"]
    assert "cvt-13/224/22k" in errors["port_combo"] and "Keras 3 .weights.h5" in errors["keras3_h5"]


def test_native_file_from_keras_loads_in_torch(tf_run):
    import torch

    import cvt

    _ok(tf_run, "weights")
    out = Path(tf_run["out"])
    model = cvt.create_model(weights=out / "from_keras.safetensors")
    x = torch.from_numpy(np.load(out / "from_keras_x.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = model(x).numpy()
    assert np.abs(y - np.load(out / "from_keras_y.npy")).max() <= TOL
    assert model.pretrained_cfg.preprocess.img_size == 64


def test_port_h5_loads_in_torch(job):
    """The TF port's .h5 through the core reader into cvt-torch: the same logits as the model it was written from."""
    import torch

    import cvt
    from cvt.core.weights import read_arrays

    root = Path(job["root"])
    loaded = read_arrays(root / "port.h5")
    assert loaded.source_format == "official" and "stages.2.cls_token" in loaded.state_dict
    model = cvt.create_model(weights=root / "port.h5")
    x = torch.from_numpy(np.load(root / "dw_bn_96x160_x.npy"))
    with torch.no_grad():
        assert np.abs(model(x).numpy() - np.load(root / "dw_bn_96x160_y.npy")).max() <= TOL


@pytest.mark.train
def test_training(run):
    res = _ok(run, "train")
    assert res["bn_count"] > 10 and res["bn_diff"] <= 1e-6, res
    if run["backend"] != "tensorflow":
        return  # fit and mixed precision: on the TensorFlow backend only (time)
    assert res["loss"][-1] < 0.8 * res["loss"][0], res["loss"]
    if "mixed" in res:
        m = res["mixed"]
        assert m["dtype"] == "float32" and m["compute"] == "bfloat16" and m["loss_finite"]
        assert m["diff"] <= 0.05 * m["scale"] + 0.05, m


@pytest.mark.export
def test_export_round_trips(tf_run):
    res = _ok(tf_run, "export")
    assert all(v <= 1e-4 for v in res["saved_model"].values()), res["saved_model"]
    assert all(v <= 1e-4 for v in res["litert"].values()), res["litert"]
    assert not [op for op in res["ops"] if "Flex" in op or "CUSTOM" in op.upper()], res["ops"]


@pytest.mark.slow
@pytest.mark.parity
def test_cvt13_224_equals_cvt_torch(job):
    """The real cvt-13 (random weights, randomised norms) at 224, batch 2, on the TensorFlow backend."""
    import torch

    import cvt
    from conftest import randomize_norms
    from cvt.core.weights import save_native_arrays

    root = Path(job["root"])
    torch.manual_seed(13)
    model = randomize_norms(cvt.create_model("cvt-13"), seed=13).eval()
    save_native_arrays(_numpy_sd(model), model.config, root / "cvt13.safetensors")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        np.save(root / "cvt13_y.npy", model(x).numpy())
    np.save(root / "cvt13_x.npy", x.numpy())
    assert _ok(_run_worker(job, "tensorflow", "cvt13"), "cvt13")["diff"] <= TOL

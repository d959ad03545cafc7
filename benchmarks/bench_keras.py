"""Keras CvT inference speed beside cvt-torch eager, same weights, same run: images/s at batch 1 and 32.

    python benchmarks/bench_keras.py [--model cvt-13] [--size 224] [--batches 1 32] [--backends tensorflow jax]

Each Keras backend runs in its own subprocess (``KERAS_BACKEND``): TensorFlow with XLA (``jit_compile=True``
``tf.function``, what ``model.predict`` uses), TensorFlow as a plain graph (``tf-graph``: ``tf.function`` without
XLA, oneDNN kernels), JAX (``jax.jit`` of ``stateless_call``), torch (Keras' torch backend, eager: ``--backends
torch``). cvt-torch runs eager, in eval mode under
``torch.inference_mode``. All load the same native safetensors (random weights, written once). Reports the median
of ``--repeats`` timed runs after ``--warmup`` runs, and checks that the logits agree (max abs diff).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, time
import numpy as np
import keras
import cvt.keras as ck
args = json.loads(sys.argv[1])
model = ck.create_model(weights=args["weights"])
backend = keras.backend.backend()
if backend == "tensorflow":
    import tensorflow as tf
    fn = tf.function(lambda x: model(x, training=False), jit_compile=args["xla"])
    run = lambda x: fn(x).numpy()
elif backend == "jax":
    import jax
    tv = [v.value for v in model.trainable_variables]; ntv = [v.value for v in model.non_trainable_variables]
    f = jax.jit(lambda x: model.stateless_call(tv, ntv, x, training=False)[0])
    run = lambda x: np.asarray(f(x))
else:
    run = lambda x: keras.ops.convert_to_numpy(model(x, training=False))
out = {}
for b in args["batches"]:
    x = np.load(args["inputs"][str(b)]).transpose(0, 2, 3, 1)
    for _ in range(args["warmup"]):
        y = run(x)
    times = []
    for _ in range(args["repeats"]):
        t = time.perf_counter(); y = run(x); times.append(time.perf_counter() - t)
    np.save(args["inputs"][str(b)] + f".{args['label']}.npy", y)
    out[b] = b / float(np.median(times))
print(json.dumps(out))
"""


def torch_speed(weights: Path, inputs: dict[int, str], warmup: int, repeats: int) -> dict[int, float]:
    import torch

    import cvt

    model = cvt.create_model(weights=weights).eval()
    out = {}
    for b, path in inputs.items():
        x = torch.from_numpy(np.load(path))
        with torch.inference_mode():
            for _ in range(warmup):
                y = model(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                y = model(x)
                times.append(time.perf_counter() - t)
        np.save(path + ".torch.npy", y.numpy())
        out[b] = b / float(np.median(times))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cvt-13")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "tf-graph", "jax"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import torch

    import cvt
    from cvt.core.weights import save_native_arrays

    tmp = Path(tempfile.mkdtemp(prefix="bench_keras_"))
    torch.manual_seed(0)
    model = cvt.create_model(args.model)
    weights = save_native_arrays(
        {k: v.numpy() for k, v in model.state_dict().items()}, model.config, tmp / "w.safetensors"
    )
    rng = np.random.default_rng(0)
    inputs = {}
    for b in args.batches:
        inputs[b] = str(tmp / f"x{b}.npy")
        np.save(inputs[b], rng.standard_normal((b, 3, args.size, args.size)).astype(np.float32))
    rows = {("cvt-torch eager", "torch"): torch_speed(weights, inputs, args.warmup, args.repeats)}
    job = {
        "weights": str(weights),
        "inputs": {str(b): p for b, p in inputs.items()},
        "batches": args.batches,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    labels = {"tensorflow": "keras/tensorflow xla", "tf-graph": "keras/tensorflow graph", "jax": "keras/jax jit"}
    for name in args.backends:
        backend = "tensorflow" if name == "tf-graph" else name
        label = labels.get(name, f"keras/{name} eager")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, "-c", WORKER, json.dumps({**job, "xla": name == "tensorflow", "label": f"keras-{name}"})]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        speeds = json.loads(proc.stdout.strip().splitlines()[-1])
        rows[(label, f"keras-{name}")] = {int(k): v for k, v in speeds.items()}
    print(f"{args.model} at {args.size}, torch threads {torch.get_num_threads()}: images/s (max |logit diff| vs torch)")
    print(f"{'':24s}" + "".join(f"{'batch ' + str(b):>22s}" for b in args.batches))
    for (label, suffix), speeds in rows.items():
        cells = []
        for b in args.batches:
            ref = np.load(inputs[b] + ".torch.npy")
            diff = float(np.abs(np.load(inputs[b] + f".{suffix}.npy") - ref).max())
            cells.append(f"{speeds[b]:10.1f} ({diff:.1e})")
        print(f"{label:24s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()

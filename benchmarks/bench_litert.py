"""LiteRT (``.tflite``) export of a Keras CvT: file size, and CPU latency of the TFLite interpreter beside
cvt-torch eager at batch 1, same weights, same run.

    python benchmarks/bench_litert.py [--model cvt-13] [--size 224] [--threads 2] [--repeats 20]

Random weights (a released checkpoint has the same size: the file holds float32 weights and the graph). The
export goes through :func:`cvt.keras.export.export_verified` (reloaded and checked against Keras eager within
1e-4 before it is kept). Latency: median of ``--repeats`` single-image calls after 3 warm-up calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_ms(fn, x: np.ndarray, repeats: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cvt-13")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    import tensorflow as tf
    import torch

    import cvt
    import cvt.keras as ck
    from cvt.core.weights import save_native_arrays
    from cvt.keras.export import export_verified

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_litert_"))
    torch.manual_seed(0)
    tm = cvt.create_model(args.model).eval()
    weights = save_native_arrays({k: v.numpy() for k, v in tm.state_dict().items()}, tm.config, tmp / "w.safetensors")
    km = ck.create_model(weights=weights)

    t0 = time.perf_counter()
    worst = export_verified(km, tmp / "model.tflite", "litert", image_size=args.size)
    export_s = time.perf_counter() - t0
    size_mb = (tmp / "model.tflite").stat().st_size / 2**20

    interp = tf.lite.Interpreter(model_path=str(tmp / "model.tflite"), num_threads=args.threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], (1, args.size, args.size, 3))
    interp.allocate_tensors()

    def run_litert(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()

    x = np.random.default_rng(0).standard_normal((1, args.size, args.size, 3)).astype(np.float32)
    diff = float(np.abs(run_litert(x) - run_torch(x)).max())
    lite_ms = median_ms(run_litert, x, args.repeats)
    torch_ms = median_ms(run_torch, x, args.repeats)
    params = sum(p.numel() for p in tm.parameters()) / 1e6
    print(f"{args.model} at {args.size}, {args.threads} threads, tensorflow {tf.__version__}")
    print(f"LiteRT file: {size_mb:.1f} MiB ({params:.1f} M parameters x 4 bytes = {params * 4 / 1.048576:.1f} MiB)")
    print(f"export + verification: {export_s:.0f} s (max |diff| vs Keras eager {worst:.1e})")
    print("| batch 1 | latency ms | images/s |")
    print("|---|---|---|")
    print(f"| TFLite interpreter | {lite_ms:.1f} | {1000 / lite_ms:.1f} |")
    print(f"| cvt-torch eager | {torch_ms:.1f} | {1000 / torch_ms:.1f} |")
    print(f"max |logit diff| LiteRT vs cvt-torch: {diff:.1e}")


if __name__ == "__main__":
    main()

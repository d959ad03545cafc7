"""Inference speed: the Flax CvT under ``jax.jit`` beside cvt-torch eager, same weights, same run.

    python benchmarks/bench_jax.py [--model cvt-13] [--size 224] [--batches 1 32] [--seconds 5]

Both models hold the same random weights (randomised BatchNorm statistics); their logits are compared first.
Prints images/s per batch size for each, the ratio (JAX / PyTorch) and JAX's compile time per shape.
PyTorch runs eval + ``torch.inference_mode`` (its fast path); JAX runs the split-and-merge jitted forward.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def throughput(fn, x, seconds: float) -> float:
    """Images per second of ``fn(x)`` over at least ``seconds`` (after one warm-up call)."""
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cvt-13")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    import cvt
    from cvt import flax as cf

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tm = cvt.create_model(args.model).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mapping mistake would show
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    fm = cf.from_state_dict(tm.config, {k: v.numpy().copy() for k, v in tm.state_dict().items()})
    fm.eval()
    forward = cf.jit_forward(fm)

    def run_jax(x: np.ndarray) -> np.ndarray:
        return forward(x).block_until_ready()

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return tm(x)

    print(
        f"{args.model} at {args.size}, {args.threads} threads, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__}"
    )
    print("| batch | cvt-torch eager img/s | cvt.flax jit img/s | ratio jax/torch | jax compile s |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        x = np.random.default_rng(0).standard_normal((b, 3, args.size, args.size)).astype(np.float32)
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        t0 = time.perf_counter()
        out = run_jax(xj)
        compile_s = time.perf_counter() - t0
        diff = float(np.abs(np.asarray(out) - run_torch(torch.from_numpy(x)).numpy()).max())
        jax_ips = throughput(run_jax, xj, args.seconds)
        torch_ips = throughput(run_torch, torch.from_numpy(x), args.seconds)
        print(
            f"| {b} | {torch_ips:.1f} | {jax_ips:.1f} | {jax_ips / torch_ips:.2f} | {compile_s:.1f} |"
            f"  (max |logit diff| {diff:.1e})"
        )


if __name__ == "__main__":
    main()

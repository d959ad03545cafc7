"""``cvt bench``: ours against HF transformers' CvT with the same weights, interleaved, with ratios."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import DEFAULT_CASES

    p = sub.add_parser(
        "bench",
        help="speed and memory against HF transformers' CvT (same weights, interleaved runs)",
        description="Times each case for cvt-torch and transformers.CvtForImageClassification carrying the "
        "same weights, interleaved in one process; prints medians, ratios (HF time / ours: > 1 means we are "
        "faster), achieved GFLOP/s against a matmul peak measured first, and peak memory per side.",
    )
    p.add_argument("--model", default="cvt-13", help="architecture (default: cvt-13)")
    p.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        help=f"infer-<res>-b<batch> / train-<res>-b<batch> (default: {' '.join(DEFAULT_CASES)})",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed iterations per case and side (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-peer", action="store_true", help="skip transformers (ours only)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory child processes")
    p.add_argument("--compile", action="store_true", help="add a torch.compile'd column for ours")
    p.add_argument("--onnx", action="store_true", help="add an onnxruntime column (inference cases)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument(
        "--amp",
        choices=("fp16", "bf16"),
        default=None,
        help="autocast precision (CUDA; bf16 is ~8x slower than fp32 on CPUs without AVX-512 bf16)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import Case, format_table, run_benchmark

    for c in args.cases:
        try:
            Case.parse(c)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.repeats < 1:
        raise UsageError("--repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_peer:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise UsageError("the peer needs transformers (pip install transformers) or use --no-peer") from None
    report = run_benchmark(
        args.model,
        args.cases,
        args.repeats,
        with_peer=not args.no_peer,
        memory=not args.no_memory,
        compile_ours=args.compile,
        onnx=args.onnx,
        device=args.device,
        amp=args.amp,
        progress=lambda s: print(s, file=sys.stderr),
    )
    print(format_table(report))
    if args.json:
        args.json.write_text(report.to_json() + "\n")
    return 0

"""Benchmark cvt-torch against HF transformers' CvT (same weights, interleaved runs, one invocation).

Writes ``benchmarks/results/<model>-<device>-<precision>.{json,md}`` and prints the Markdown table that the
README quotes. Same as ``cvt bench`` with the README's settings. Two ratios of HF time to ours (> 1: ours is
faster): "same math" (ours built with ``activation="gelu"``, the exact GELU HF computes: the implementations
compared) and "defaults" (ours as shipped, QuickGELU: what a user switching libraries sees):

    .venv/bin/python benchmarks/bench_vs_hf.py                    # cvt-13, the four default cases, 5 repeats
    .venv/bin/python benchmarks/bench_vs_hf.py --compile --onnx   # + torch.compile and onnxruntime columns

Run it on a quiet machine: both sides are interleaved, but another process on the same cores still
inflates the medians (the ratios are more robust than the absolute times).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvt.bench import DEFAULT_CASES, format_table, run_benchmark
from cvt.core.errors import CvtError
from cvt.core.files import check_writable, write_text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cvt-13")
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--onnx", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("fp16", "bf16"), default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    stem = args.out / f"{args.model}-{args.device}-{args.amp or 'fp32'}"
    for path in (stem.with_suffix(".json"), stem.with_suffix(".md")):  # refuse now, not after the minutes of timing
        check_writable(path)
    report = run_benchmark(
        args.model,
        args.cases,
        args.repeats,
        compile_ours=args.compile,
        onnx=args.onnx,
        device=args.device,
        amp=args.amp,
        progress=lambda s: print(s, file=sys.stderr),
    )
    table = format_table(report)
    print(table)
    write_text(stem.with_suffix(".json"), report.to_json() + "\n")
    write_text(stem.with_suffix(".md"), table + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CvtError, ValueError) as e:  # a bad case, model, device or destination: one line, as `cvt bench`
        print(f"bench_vs_hf: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code if isinstance(e, CvtError) else 2)

"""Benchmark cvt-torch against HF transformers' CvT (same weights, interleaved runs, one invocation).

Writes ``benchmarks/results/<model>-<device>-<precision>.{json,md}`` and prints the Markdown table that the
README quotes. Same as ``cvt bench`` with the README's settings:

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
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.model}-{report.device}-{report.precision}"
    stem.with_suffix(".json").write_text(report.to_json() + "\n")
    stem.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

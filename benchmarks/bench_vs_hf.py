"""``cvt bench`` (cvt-torch against HF transformers' CvT, same weights, interleaved), its report kept here.

Every option is ``cvt bench``'s (``cvt bench --help``); the defaults are the README's settings (cvt-13, the four
default cases, 5 repeats). The Markdown table the README quotes is printed and written, with the full JSON report,
to ``benchmarks/results/<model>-<device>-<precision>.{md,json}``:

    .venv/bin/python benchmarks/bench_vs_hf.py                    # cvt-13, the four default cases, 5 repeats
    .venv/bin/python benchmarks/bench_vs_hf.py --compile --onnx   # + torch.compile and onnxruntime columns

Run it on a quiet machine: both sides are interleaved, but another process on the same cores still
inflates the medians (the ratios are more robust than the absolute times).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from cvt.bench import run_benchmark
from cvt.cli import main as cvt_main
from cvt.commands._signature import default_of
from cvt.core.errors import CvtError
from cvt.core.files import check_writable, write_text

RESULTS = Path(__file__).parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """``cvt bench ARGV --json RESULTS/<name>.json``, its table also written to ``RESULTS/<name>.md``."""
    args = list(sys.argv[1:] if argv is None else argv)
    names = argparse.ArgumentParser(add_help=False)  # only what names the result files; cvt bench checks the rest
    names.add_argument("--model", default=default_of(run_benchmark, "model_name"))
    names.add_argument("--device", default=default_of(run_benchmark, "device"))
    names.add_argument("--amp", default=default_of(run_benchmark, "amp"))
    known, _ = names.parse_known_args(args)
    stem = RESULTS / f"{known.model}-{known.device}-{known.amp or 'fp32'}"
    try:
        check_writable(stem.with_suffix(".md"))  # now, not after the minutes of timing (cvt bench checks the JSON)
    except CvtError as e:
        print(f"bench_vs_hf: error: {e}", file=sys.stderr)
        return e.exit_code
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = cvt_main(["bench", *args, "--json", str(stem.with_suffix(".json"))])
    print(table.getvalue(), end="")
    if code == 0:
        write_text(stem.with_suffix(".md"), table.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main())

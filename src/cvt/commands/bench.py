"""``cvt bench``: ours against HF transformers' CvT with the same weights, interleaved, with ratios."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch

from ..bench import Case, format_table, run_benchmark
from ..core.errors import UsageError
from ..runtime import resolve_device
from ._signature import Arg, default_of


def run_bench(
    *,
    model_name: Annotated[str, Arg("--model")] = default_of(run_benchmark, "model_name"),
    cases: Sequence[str] = default_of(run_benchmark, "cases"),
    repeats: Annotated[int, Arg(minimum=1)] = default_of(run_benchmark, "repeats"),
    threads: Annotated[int | None, Arg(minimum=1)] = None,
    with_peer: Annotated[bool, Arg("--no-peer")] = default_of(run_benchmark, "with_peer"),
    memory: bool = default_of(run_benchmark, "memory"),
    compile_ours: Annotated[bool, Arg("--compile")] = default_of(run_benchmark, "compile_ours"),
    onnx: bool = default_of(run_benchmark, "onnx"),
    device: str = default_of(run_benchmark, "device"),
    amp: Literal["fp16", "bf16"] | None = default_of(run_benchmark, "amp"),
    json_path: Annotated[Path | None, Arg("--json")] = None,
) -> int:
    """Times each case for cvt-torch and transformers.CvtForImageClassification carrying the same weights,
    interleaved in one process; prints medians, ratios (HF time / ours: > 1 means we are faster), achieved GFLOP/s
    against a matmul peak measured first, and peak memory per side.

    Args:
        model_name: architecture
        cases: infer-<res>-b<batch> / train-<res>-b<batch>
        repeats: timed iterations per case and side (median)
        threads: torch threads (default: torch's choice)
        with_peer: skip transformers (ours only)
        memory: per-side peak-memory child processes
        compile_ours: add a torch.compile'd column for ours
        onnx: add an onnxruntime column (inference cases)
        device: cpu or cuda[:i]
        amp: autocast precision (CUDA; bf16 is ~8x slower than fp32 on CPUs without AVX-512 bf16)
        json_path: also write the full report as JSON
    """
    for c in cases:  # NOTE before minutes of warm-up: run_benchmark parses each case only when it gets there
        try:
            Case.parse(c)
        except ValueError as e:
            raise UsageError(str(e)) from None
    device = str(resolve_device(device))
    if with_peer and importlib.util.find_spec("transformers") is None:
        raise UsageError("the peer needs transformers (pip install transformers) or use --no-peer")
    if threads:
        torch.set_num_threads(threads)
    report = run_benchmark(
        model_name,
        list(cases),
        repeats,
        with_peer=with_peer,
        memory=memory,
        compile_ours=compile_ours,
        onnx=onnx,
        device=device,
        amp=amp,
        progress=lambda s: print(s, file=sys.stderr),
    )
    print(format_table(report))
    if json_path:
        json_path.write_text(report.to_json() + "\n")
    return 0

"""``cvt bench``: ours against HF transformers' CvT with the same weights, interleaved, with two ratios ("same
math": ours with HF's activation; "defaults": ours as shipped)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch

from ..bench import Case, format_table, run_benchmark
from ..core import bounds
from ..core.errors import UsageError, require
from ..core.files import check_writable, write_text
from ..core.hub import is_hub_id
from ..core.presets import get_config
from ..torch.runtime import resolve_device
from ._signature import Arg, default_of


def run_bench(
    *,
    model_name: Annotated[str, Arg("--model")] = default_of(run_benchmark, "model_name"),
    cases: Sequence[str] = default_of(run_benchmark, "cases"),
    repeats: Annotated[int, Arg(minimum=1)] = default_of(run_benchmark, "repeats"),
    threads: Annotated[int | None, Arg(minimum=1)] = None,
    peer: bool = default_of(run_benchmark, "with_peer"),
    memory: bool = default_of(run_benchmark, "memory"),
    compile_ours: Annotated[bool, Arg("--compile")] = default_of(run_benchmark, "compile_ours"),
    onnx: bool = default_of(run_benchmark, "onnx"),
    device: str = default_of(run_benchmark, "device"),
    amp: Literal["fp16", "bf16"] | None = default_of(run_benchmark, "amp"),
    json_path: Annotated[Path | None, Arg("--json")] = None,
) -> int:
    """Times each case for cvt-torch and transformers.CvtForImageClassification carrying the same weights,
    interleaved in one process; prints medians, two ratios of HF time to ours (> 1 means we are faster): "same
    math", against ours built with HF's activation (exact GELU), which compares the implementations, and
    "defaults", against ours as shipped (QuickGELU), what a user sees; achieved GFLOP/s against a matmul peak
    measured first, and peak memory per side.

    Args:
        model_name: architecture
        cases: infer-<res>-b<batch> / train-<res>-b<batch>
        repeats: timed iterations per case and side (median)
        threads: torch threads (default: torch's choice)
        peer: transformers' CvT timed beside ours (both ratios need it)
        memory: per-side peak-memory child processes
        compile_ours: add a torch.compile'd column for ours
        onnx: add an onnxruntime column (inference cases)
        device: cpu or cuda[:i]
        amp: autocast precision (CUDA; bf16 is ~8x slower than fp32 on CPUs without AVX-512 bf16)
        json_path: also write the full report as JSON
    """
    # NOTE every argument is checked before the minutes of matmul peak, model building and warm-up
    bounds.check_options(repeats=(repeats, bounds.REPEATS), threads=(threads, bounds.THREADS))
    if is_hub_id(model_name):  # timing needs an architecture only; the same weights go to both sides
        raise UsageError(f"--model {model_name}: cvt bench times an architecture (cvt-13, ...), not a hub repo")
    config = get_config(model_name)  # UnknownModelError (exit 2) naming the known models
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: the benchmark runs on cpu or cuda[:i]")
    if amp == "fp16" and dev.type != "cuda":
        raise UsageError(f"--amp fp16: needs a CUDA device (on {dev.type}: bf16, or no --amp)")
    if onnx:
        if dev.type != "cpu":
            raise UsageError(f"--onnx: the onnxruntime column runs on the CPU; not with --device {device}")
        require("onnxruntime", "export", "--onnx")
        require("onnx", "export", "--onnx")
    if peer and importlib.util.find_spec("transformers") is None:
        raise UsageError("the peer needs transformers (pip install transformers) or use --no-peer")
    memory_bytes = _device_memory(dev)
    unique = list(dict.fromkeys(cases))  # a case named twice would be timed twice under one name
    for c in unique:
        try:
            case = Case.parse(c)
            bounds.check(case.res, bounds.RESOLUTION, f"case {c}: resolution", ValueError)
            bounds.check(case.batch, bounds.BATCH_SIZE, f"case {c}: batch", ValueError)
            case.check(config, memory_bytes, amp)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if json_path:
        check_writable(json_path)
    if threads:
        torch.set_num_threads(threads)
    report = run_benchmark(
        model_name,
        unique,
        repeats,
        with_peer=peer,
        memory=memory,
        compile_ours=compile_ours,
        onnx=onnx,
        device=str(dev),
        amp=amp,
        progress=lambda s: print(s, file=sys.stderr),
    )
    print(format_table(report))
    if json_path:
        write_text(json_path, report.to_json() + "\n")
    return 0


def _device_memory(dev: torch.device) -> int | None:
    """Bytes of memory on ``dev`` (the GPU's, or the machine's RAM), ``None`` when unknown."""
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None

"""Benchmark cvt (PyTorch) against HF transformers' CvT carrying the same weights.

Runs are interleaved (ours, peer, ours, peer, ...) in one process so both see the same machine state; the
report gives medians, two ratios peer/ours (> 1: we are faster), the achieved GFLOP/s against a matmul peak
measured at the start of the run, and each side's peak memory, measured in a fresh child process per side
(``VmHWM`` after resetting it with ``/proc/self/clear_refs``), so the two do not share a high-water mark.

The two ratios keep the activation out of the engine comparison. The released weights run QuickGELU (the fused
model computes it as one SiLU kernel); HF always computes the exact (erf) GELU, a different function:

* **same math**: HF against ours built with ``activation="gelu"`` (``"ours-gelu"``, the same weights and the
  same function HF computes): what the implementation itself is worth;
* **defaults**: HF against ours as shipped (QuickGELU): what a user switching libraries sees.

Cases are strings ``infer-<res>-b<batch>`` or ``train-<res>-b<batch>`` (forward, backward, AdamW step).
"ours" (and "ours-gelu") is what the library runs for each: the fused model (:func:`cvt.fuse`) for inference,
the reference model for training.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .core.config import CvTConfig
from .torch.fusion import fuse
from .torch.model import CvT

DEFAULT_CASES = ("infer-224-b1", "infer-224-b32", "infer-384-b8", "train-224-b32")
SAME_MATH = "ours-gelu"  # ours with HF's activation (exact GELU): the "same math" side of the comparison
RATIO_DEFINITIONS = {
    "same_math": "HF time / time of ours built with activation='gelu' (the exact GELU that HF computes)",
    "defaults": "HF time / time of ours as shipped (QuickGELU, one SiLU kernel in the fused model)",
}


@dataclass
class Case:
    kind: str  # "infer" | "train"
    res: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> Case:
        m = re.fullmatch(r"(infer|train)-(\d+)-b(\d+)", text)
        if not m:
            raise ValueError(f"case {text!r}: expected infer-<res>-b<batch> or train-<res>-b<batch>")
        case = cls(m.group(1), int(m.group(2)), int(m.group(3)))
        if case.res < 1 or case.batch < 1:
            raise ValueError(f"case {text!r}: the resolution and the batch must be at least 1")
        return case

    def check(self, config: CvTConfig, memory_bytes: int | None = None, amp: str | None = None) -> None:
        """Raise ``ValueError`` (one line naming the case) when it cannot run on ``config``: an input too small
        for the stages, a training batch that leaves BatchNorm one value per channel, or (``memory_bytes``: the
        device's memory) one activation tensor larger than the whole device, before anything is allocated."""
        try:
            shapes = config.feature_shapes(self.res, self.res)  # [(C, H, W)] per stage
        except ValueError as e:
            raise ValueError(f"case {str(self)!r}: {e}") from None
        if self.kind == "train":  # BatchNorm in training mode needs two values per channel (batch x map)
            for i, (stage, (_, h, w)) in enumerate(zip(config.stages, shapes, strict=True)):
                if stage.qkv_proj_method == "dw_bn":
                    smallest = min(a * b for a, b in (stage.projected_shape(h, w, k) for k in ("q", "kv")))
                    if self.batch * smallest < 2:
                        raise ValueError(
                            f"case {str(self)!r}: stage {i}'s BatchNorm sees one value per channel in training; "
                            f"use a batch of 2 or more or a larger resolution"
                        )
        if memory_bytes:
            itemsize = 2 if amp else 4
            hidden = max(c * h * w * s.mlp_ratio for (c, h, w), s in zip(shapes, config.stages, strict=True))
            need = self.batch * hidden * itemsize  # one MLP hidden activation: a lower bound of the peak
            if need > memory_bytes:
                raise ValueError(
                    f"case {str(self)!r}: one activation alone needs {need / 2**30:.0f} GiB; the device has "
                    f"{memory_bytes / 2**30:.0f} GiB"
                )

    def __str__(self) -> str:
        return f"{self.kind}-{self.res}-b{self.batch}"


@dataclass
class Result:
    case: str
    impl: str
    times_s: list[float]
    gflop_per_s: float
    peak_mem_mb: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


@dataclass
class Report:
    """Every timing of a run; ``activation``: what "ours" computes as shipped (``"gelu"``: ours already does
    HF's math, and no "ours-gelu" side is timed)."""

    model: str
    threads: int
    torch_version: str
    peak_gflop_per_s: float
    device: str = "cpu"
    precision: str = "fp32"
    results: list[Result] = field(default_factory=list)
    activation: str = "quick_gelu"

    def ratio(self, case: str, impl: str, ref: str = "ours") -> float | None:
        """``impl``'s median time over ``ref``'s for ``case`` (``None`` when either was not timed)."""
        by = {(r.case, r.impl): r for r in self.results}
        if (case, impl) not in by or (case, ref) not in by:
            return None
        return by[(case, impl)].median_s / by[(case, ref)].median_s

    def same_math_ratio(self, case: str) -> float | None:
        """HF time / ours computing HF's activation (exact GELU): the engines compared on the same function."""
        return self.ratio(case, "hf", "ours" if self.activation == "gelu" else SAME_MATH)

    def defaults_ratio(self, case: str) -> float | None:
        """HF time / ours as shipped (QuickGELU for the released weights): what switching libraries gives."""
        return self.ratio(case, "hf")

    def cases(self) -> list[str]:
        return list(dict.fromkeys(r.case for r in self.results))

    def to_json(self) -> str:
        """The report as JSON, with ``ratios_hf_over_ours`` (``same_math`` and ``defaults``, per case) and
        ``ratio_definitions`` saying what each compares."""
        d = asdict(self)
        ratios = {"same_math": self.same_math_ratio, "defaults": self.defaults_ratio}
        d["ratios_hf_over_ours"] = {
            kind: {c: r for c in self.cases() if (r := ratio(c)) is not None} for kind, ratio in ratios.items()
        }
        d["ratio_definitions"] = RATIO_DEFINITIONS
        return json.dumps(d, indent=2)


def matmul_peak(n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM GFLOP/s on this device and thread count (the physical ceiling for CvT's Linear layers)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def build_pair(model_name: str, with_peer: bool = True, same_math: bool = False) -> dict[str, nn.Module]:
    """Our model and (optionally) ``transformers.CvtForImageClassification`` with identical weights.

    ``same_math``: also ``"ours-gelu"``, ours with the same weights and HF's activation (exact GELU), unless
    ours computes it already.
    """
    from .core.keys import convert_state_dict
    from .torch.factory import create_model

    ours = create_model(model_name)
    models: dict[str, nn.Module] = {"ours": ours}
    if with_peer:
        import transformers

        hf = transformers.CvtForImageClassification(transformers.CvtConfig(**ours.config.to_hf_config()))
        hf.load_state_dict(convert_state_dict(ours.state_dict(), "native", "hf"))
        models["hf"] = _HFLogits(hf)
    if same_math and ours.config.activation != "gelu":
        gelu = CvT(ours.config.replace(activation="gelu"))
        gelu.load_state_dict(ours.state_dict())
        models[SAME_MATH] = gelu
    return models


class _HFLogits(nn.Module):
    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits


class _OnnxModel(nn.Module):
    """Our model exported to ONNX (dynamic batch and size) and run by onnxruntime on the CPU."""

    def __init__(self, model: nn.Module):
        super().__init__()
        import tempfile

        import onnxruntime as ort

        from .torch.export import export_model

        path = os.path.join(tempfile.mkdtemp(prefix="cvt-bench-"), "model.onnx")
        export_model(model.eval(), path, "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # do not steal the other side's cores
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"pixel_values": x.numpy()})[0])


def make_step(
    model: nn.Module, case: Case, device: str = "cpu", amp: str | None = None, compiled: bool = False
) -> Callable[[], None]:
    """A zero-argument callable running one iteration of ``case`` on ``model`` (synchronised on CUDA).

    Inference runs a fused copy of a :class:`~cvt.torch.model.CvT` (:func:`cvt.fuse`), training the model itself.
    ``amp``: ``None`` (fp32), ``"fp16"`` (autocast + GradScaler in training) or ``"bf16"`` (autocast).
    ``compiled``: run it through ``torch.compile`` (one static graph per input shape).
    """
    if case.kind == "infer" and isinstance(model, CvT):
        model = fuse(model)
    model.to(device)
    if compiled:
        # dynamic=False: one static graph per input shape (the dynamic-shape lowering of torch 2.13 fails here)
        model = torch.compile(model, dynamic=False)
    x = torch.randn(case.batch, 3, case.res, case.res, device=device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "")
    autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if case.kind == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                model(x)
            sync()

        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp == "fp16")
    with torch.no_grad():
        num_classes = model(x[:1]).shape[-1]
    target = torch.randint(0, num_classes, (case.batch,), device=device)

    def train() -> None:
        with autocast():
            loss = nn.functional.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()

    return train


def _cuda_peak_mb(step: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _peak_memory_child(model_name: str, impl: str, case: str) -> float | None:
    """Peak extra resident memory (MB) of one iteration, measured in a fresh process."""
    code = (
        "import sys, torch; from cvt.bench import _measure_memory_here; "
        f"print(_measure_memory_here({model_name!r}, {impl!r}, {case!r}))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _measure_memory_here(model_name: str, impl: str, case_text: str) -> float:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    case = Case.parse(case_text)
    model = build_pair(model_name, with_peer=impl == "hf")[impl]
    step = make_step(model, case)
    step()  # warm-up: allocator pools, oneDNN primitives, optimizer state
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    step()
    return (_status_kb("VmHWM") - before) / 1024


def run_benchmark(
    model_name: str = "cvt-13",
    cases: list[str] | tuple[str, ...] = DEFAULT_CASES,
    repeats: int = 5,
    with_peer: bool = True,
    memory: bool = True,
    compile_ours: bool = False,
    onnx: bool = False,
    device: str = "cpu",
    amp: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Interleaved timing of every case for ours, and with ``with_peer`` HF and ours with HF's activation (the
    two ratios: see the module docstring); ``compile_ours`` / ``onnx`` add a torch.compile'd ours / onnxruntime.

    Raises ``ValueError`` for a case that cannot run (see :meth:`Case.check`) before timing anything, and
    :class:`~cvt.core.errors.CvtError` naming the case and side when a step fails in its warm-up run.
    """
    from .core.errors import CvtError, first_line
    from .core.macs import count_macs
    from .core.presets import get_config

    parsed = [Case.parse(text) for text in cases]
    for case in parsed:  # NOTE before the matmul peak and the models: a bad case fails in seconds
        case.check(get_config(model_name), amp=amp)
    say = progress or (lambda s: None)
    gemm_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "", torch.float32)
    peak = matmul_peak(4096 if device.startswith("cuda") else 2048, device=device, dtype=gemm_dtype)
    report = Report(model_name, torch.get_num_threads(), torch.__version__, peak, device, amp or "fp32")
    say(f"matmul peak {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    # NOTE "ours-gelu" only beside the peer: it exists for the same-math ratio (ours' own numbers are "ours")
    models = build_pair(model_name, with_peer, same_math=with_peer)
    if compile_ours:
        models["ours-compiled"] = build_pair(model_name, with_peer=False)["ours"]
    config = models["ours"].config  # type: ignore[attr-defined]
    report.activation = config.activation
    if onnx:
        models["onnxruntime"] = _OnnxModel(models["ours"])
    for text, case in zip(cases, parsed, strict=True):
        flop = 2 * count_macs(config, case.res) * case.batch * (3 if case.kind == "train" else 1)
        steps = {}
        for impl, m in models.items():
            if case.kind == "train" and impl == "onnxruntime":
                continue
            try:  # warm-up (and compilation) outside the timings; a failure names the case and the side
                steps[impl] = make_step(m, case, device, amp, compiled=impl == "ours-compiled")
                steps[impl]()
            except (RuntimeError, ValueError, MemoryError) as e:  # out of memory, no compiler, a shape refused
                raise CvtError(f"case {text}: {impl} failed in its first run: {first_line(e)}") from e
        times: dict[str, list[float]] = {impl: [] for impl in steps}
        for _ in range(repeats):
            for impl, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - t0)
        for impl, ts in times.items():
            med = statistics.median(ts)
            if not memory or impl not in ("ours", "hf"):
                mem = None
            elif device.startswith("cuda"):
                mem = _cuda_peak_mb(steps[impl])
            else:
                mem = _peak_memory_child(model_name, impl, text)
            report.results.append(Result(text, impl, ts, flop / med / 1e9, mem))
            say(f"{text:<15} {impl:<14} {med * 1000:9.1f} ms  {flop / med / 1e9:6.1f} GFLOP/s")
        del steps  # free this case's optimizer state and inputs before the next case
        gc.collect()
    return report


def format_table(report: Report) -> str:
    """A Markdown table: case; ours as shipped, ours with HF's activation, HF (ms); the two ratios, labelled
    ("same math" and "defaults", see the module docstring); ours' GFLOP/s and % of the matmul peak; peak memory."""
    extras = [i for i in ("ours-compiled", "onnxruntime") if any(r.impl == i for r in report.results)]
    shipped = "QuickGELU" if report.activation == "quick_gelu" else report.activation
    lines = [
        f"{report.model}, {report.precision} on {report.device}, {report.threads} threads, "
        f"torch {report.torch_version}, "
        f"matmul peak {report.peak_gflop_per_s:.0f} GFLOP/s",
        "",
        f"same math: HF vs ours with HF's activation (exact GELU); defaults: HF vs ours as shipped ({shipped}). "
        "Ratios are HF time / ours: > 1 means ours is faster.",
        "",
        "| case | ours ms | ours-gelu ms | HF ms | HF/ours same math | HF/ours defaults "
        "| ours eff. GFLOP/s (% peak) | ours MB | HF MB | ours/HF mem |"
        + "".join(f" {i} ms | HF/{i} |" for i in extras),
        "|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * len(extras),
    ]
    by = {(r.case, r.impl): r for r in report.results}
    for case in report.cases():
        ours, hf = by.get((case, "ours")), by.get((case, "hf"))
        assert ours is not None

        def ms(r: Result | None) -> str:
            return f"{r.median_s * 1000:.0f}" if r else "-"

        def mb(r: Result | None) -> str:
            return f"{r.peak_mem_mb:.0f}" if r and r.peak_mem_mb is not None else "-"

        def times(r: float | None) -> str:
            return f"**{r:.2f}x**" if r is not None else "-"

        gelu = ours if report.activation == "gelu" else by.get((case, SAME_MATH))
        mem_ratio = (
            f"{ours.peak_mem_mb / hf.peak_mem_mb:.2f}"
            if hf and ours.peak_mem_mb and hf.peak_mem_mb and hf.peak_mem_mb > 0
            else "-"
        )
        pct = 100 * ours.gflop_per_s / report.peak_gflop_per_s
        row = (
            f"| {case} | {ms(ours)} | {ms(gelu)} | {ms(hf)} | {times(report.same_math_ratio(case))} | "
            f"{times(report.defaults_ratio(case))} | {ours.gflop_per_s:.0f} ({pct:.0f}%) | {mb(ours)} | "
            f"{mb(hf)} | {mem_ratio} |"
        )
        for impl in extras:
            other = by.get((case, impl))
            row += f" {ms(other)} | " + (f"{hf.median_s / other.median_s:.2f}x |" if hf and other else "- |")
        lines.append(row)
    return "\n".join(lines)

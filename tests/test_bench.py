"""The benchmark machinery runs end to end on a tiny model (speed targets are checked by `cvt bench`, not here);
the two ratios are labelled and computed from the right sides; every bad argument is one line, before any timing."""

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cvt.commands.bench as bench_command
from conftest import path_state, read_only_dir
from cvt import bench
from cvt.bench import Case, Report, Result, build_pair, format_table, make_step, run_benchmark
from cvt.cli import main

TESTS = Path(__file__).parent


def test_case_parsing():
    assert Case.parse("infer-224-b32") == Case("infer", 224, 32)
    with pytest.raises(ValueError, match="expected infer"):
        Case.parse("infer-224")
    with pytest.raises(ValueError, match="at least 1"):
        Case.parse("infer-0-b1")


def test_peer_carries_the_same_weights():
    """ "ours-gelu" is the same function as HF (the "same math" side); "ours" differs only by QuickGELU."""
    pytest.importorskip("transformers")
    models = build_pair("cvt-tiny", same_math=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hf, gelu, ours = (models[k].eval()(x) for k in ("hf", "ours-gelu", "ours"))
    torch.testing.assert_close(hf, gelu, rtol=0, atol=1e-5)
    assert not torch.allclose(hf, ours, rtol=0, atol=1e-5)
    assert models["ours-gelu"].config.activation == "gelu" and models["ours"].config.activation == "quick_gelu"


def test_inference_cases_run_the_fused_model(monkeypatch):
    """The "ours" column is what the library runs: the fused model for inference, the reference for training."""
    calls = []
    monkeypatch.setattr(bench, "fuse", lambda m: calls.append(m) or m.fuse())
    ours = build_pair("cvt-tiny", with_peer=False)["ours"]
    make_step(ours, Case.parse("infer-64-b1"))()
    make_step(ours, Case.parse("train-64-b2"))()
    assert calls == [ours] and not ours.fused


def _report(activation: str = "quick_gelu") -> Report:
    """Fixed medians: ours 100 ms, ours-gelu 125 ms, HF 250 ms (infer); training without ours-gelu."""
    r = Report("cvt-13", 2, "2.x", 100.0, activation=activation)
    for case, impl, ms in [
        ("infer-224-b1", "ours", 100),
        ("infer-224-b1", "hf", 250),
        ("infer-224-b1", "ours-gelu", 125),
        ("train-224-b2", "ours", 400),
        ("train-224-b2", "hf", 600),
    ]:
        r.results.append(Result(case, impl, [ms / 1000], 50.0))
    return r


def test_both_ratios_are_reported_and_labelled():
    r = _report()
    assert r.same_math_ratio("infer-224-b1") == pytest.approx(2.0)
    assert r.defaults_ratio("infer-224-b1") == pytest.approx(2.5)
    assert r.same_math_ratio("train-224-b2") is None and r.defaults_ratio("train-224-b2") == pytest.approx(1.5)
    table = format_table(r)
    assert "| case | ours ms | ours-gelu ms | HF ms | HF/ours same math | HF/ours defaults |" in table
    assert "| infer-224-b1 | 100 | 125 | 250 | **2.00x** | **2.50x** |" in table
    assert "| train-224-b2 | 400 | - | 600 | - | **1.50x** |" in table
    assert "ours as shipped (QuickGELU)" in table
    d = json.loads(r.to_json())
    assert d["ratios_hf_over_ours"]["same_math"] == pytest.approx({"infer-224-b1": 2.0})
    assert d["ratios_hf_over_ours"]["defaults"] == pytest.approx({"infer-224-b1": 2.5, "train-224-b2": 1.5})
    assert set(d["ratio_definitions"]) == {"same_math", "defaults"} and d["activation"] == "quick_gelu"
    # ours already computing HF's function: the same-math ratio is the defaults one, from "ours" itself
    g = _report("gelu")
    assert g.same_math_ratio("train-224-b2") == pytest.approx(1.5)
    assert "| train-224-b2 | 400 | 400 | 600 | **1.50x** | **1.50x** |" in format_table(g)


def test_run_benchmark_tiny(tmp_path, capsys):
    pytest.importorskip("transformers")
    report = run_benchmark("cvt-tiny", ["infer-64-b2", "train-64-b2"], repeats=1, memory=False)
    impls = ("ours", "hf", "ours-gelu")  # ours-gelu: the extra side of the same-math ratio, ours only
    pairs = {(case, impl) for case in ("infer-64-b2", "train-64-b2") for impl in impls}
    assert {(r.case, r.impl) for r in report.results} == pairs
    assert report.ratio("infer-64-b2", "hf") > 0 and report.peak_gflop_per_s > 1
    assert report.same_math_ratio("infer-64-b2") == report.ratio("infer-64-b2", "hf", "ours-gelu") > 0
    assert "| infer-64-b2 |" in format_table(report)
    args = ["--model", "cvt-tiny", "--cases", "infer-64-b1", "--repeats", "1", "--no-peer", "--no-memory"]
    assert main(["bench", *args, "--json", str(tmp_path / "r.json")]) == 0
    d = json.loads((tmp_path / "r.json").read_text())
    assert [r["impl"] for r in d["results"]] == ["ours"]  # without the peer no ratio, so no ours-gelu either
    assert d["ratios_hf_over_ours"] == {"same_math": {}, "defaults": {}}
    assert main(["bench", "--cases", "infer-64"]) == 2


def test_the_benchmarks_script_is_cvt_bench_keeping_its_report(monkeypatch, tmp_path, capsys):
    """``benchmarks/bench_vs_hf.py`` runs ``cvt bench`` with the same arguments and keeps the JSON report and the
    printed table under ``<model>-<device>-<precision>``; a bad argument is cvt bench's one line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_vs_hf", TESTS.parent / "benchmarks" / "bench_vs_hf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: 1.0)
    args = ["--model", "cvt-tiny", "--cases", "infer-64-b1", "--repeats", "1", "--no-peer", "--no-memory"]
    assert script.main(args) == 0
    table = capsys.readouterr().out
    assert "| infer-64-b1 |" in table and (tmp_path / "cvt-tiny-cpu-fp32.md").read_text() == table
    report = json.loads((tmp_path / "cvt-tiny-cpu-fp32.json").read_text())
    assert [r["impl"] for r in report["results"]] == ["ours"]
    assert script.main(["--model", "cvt-tiny", "--no-peer", "--cases", "infer-64"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("cvt bench: error: ")


def test_a_step_that_fails_is_one_line_naming_the_case(monkeypatch, capsys):
    def make(model, case, *args, **kwargs):
        def step():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nmore")

        return step

    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: 1.0)
    monkeypatch.setattr(bench, "make_step", make)
    code = main(["bench", "--model", "cvt-tiny", "--no-peer", "--no-memory", "--cases", "infer-64-b1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "cvt bench: error: case infer-64-b1: ours failed in its first run: DefaultCPUAllocator: can't allocate memory"
    )


# ---------------------------------------------------------------------------- hostile arguments
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """``afile`` (a file), ``adir`` (a directory), ``ro/`` (read-only: mode bits, or the immutable flag as root)."""
    w = tmp_path_factory.mktemp("bench")
    (w / "afile").write_text("a file, not a directory\n")
    (w / "adir").mkdir()
    (w / "ro").mkdir()
    with read_only_dir(w / "ro"):
        yield w


@dataclass(frozen=True)
class Row:
    id: str
    args: Callable[[Path], list[str]]
    code: int
    says: str  # in the one stderr line
    dest: str | None = None  # must stay as it was


def _json(where: str) -> Callable[[Path], list[str]]:
    return lambda w: ["--cases", "infer-64-b1", "--json", str(w / where)]


ROWS = [
    Row("cases-nonsense", lambda w: ["--cases", "nonsense"], 2, "case 'nonsense': expected infer-<res>-b<batch>"),
    Row("cases-resolution-0", lambda w: ["--cases", "infer-0-b1"], 2, "case 'infer-0-b1': the resolution"),
    Row("cases-batch-0", lambda w: ["--cases", "infer-64-b0"], 2, "case 'infer-64-b0': the resolution"),
    Row("cases-too-small", lambda w: ["--cases", "infer-2-b1"], 2, "leave an empty 0x0 map for a 2x2 input"),
    Row("cases-one-value-per-bn-channel", lambda w: ["--cases", "train-3-b1"], 2, "BatchNorm sees one value"),
    # refused by the bounds policy (cvt.core.bounds) before the memory estimate is even needed
    Row("cases-beyond-bounds", lambda w: ["--cases", "infer-200000-b64"], 2, "resolution: 200000 is outside"),
    Row("cases-larger-than-memory", lambda w: ["--cases", "infer-1024-b8192"], 2, "one activation alone needs"),
    Row("cases-bad-second", lambda w: ["--cases", "infer-64-b1", "infer-x"], 2, "case 'infer-x'"),
    Row("repeats-0", lambda w: ["--repeats", "0"], 2, "argument --repeats: must be >= 1"),
    Row("threads-0", lambda w: ["--threads", "0"], 2, "argument --threads: must be >= 1"),
    Row("model-unknown", lambda w: ["--model", "nope"], 2, "unknown model 'nope'"),
    Row("device-cuda", lambda w: ["--device", "cuda"], 2, "CUDA is not available"),
    Row("device-meta", lambda w: ["--device", "meta"], 2, "--device meta: the benchmark runs on cpu or cuda"),
    Row("device-nonsense", lambda w: ["--device", "gpu0"], 2, "device 'gpu0': not a device name"),
    Row("amp-fp16-on-cpu", lambda w: ["--device", "cpu", "--amp", "fp16"], 2, "--amp fp16: needs a CUDA device"),
    Row("amp-unknown", lambda w: ["--amp", "fp8"], 2, "argument --amp: invalid choice"),
    Row("json-under-a-file", _json("afile/x.json"), 1, "afile/x.json: cannot write", dest="afile"),
    Row("json-missing-parent-under-a-file", _json("afile/d/x.json"), 1, "afile/d/x.json: cannot write", "afile"),
    Row("json-is-a-directory", _json("adir"), 1, "adir: is a directory", dest="adir"),
    Row("json-read-only", _json("ro/x.json"), 1, "ro/x.json: cannot write", dest="ro"),
    Row("json-and-bad-case", lambda w: ["--cases", "infer-0-b1", "--json", str(w / "adir" / "x.json")], 2,
        "case 'infer-0-b1'", dest="adir"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_cvt_bench_hostile_arguments(row: Row, world: Path, capsys, monkeypatch):
    if row.id == "json-read-only" and os.access(world / "ro", os.W_OK):
        pytest.skip("root ignores permission bits, and the immutable flag is not available here")
    # every refusal comes before the benchmark: one that waited for it (minutes on a real model) trips this
    monkeypatch.setattr(bench_command, "run_benchmark", lambda *a, **k: pytest.fail("the benchmark started"))
    before = path_state(world / row.dest) if row.dest else None
    t0 = time.perf_counter()
    try:
        code = main(["bench", "--model", "cvt-tiny", "--no-peer", "--no-memory", *row.args(world)])
    except SystemExit as e:  # argparse's own refusals (a bound, a choice)
        code = int(e.code or 0)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    # NOTE argparse prints its usage block before its one error line; that block is the parser's, not ours
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("cvt bench: error: ") and row.says in lines[0], lines
    assert code == row.code
    if row.dest:
        assert path_state(world / row.dest) == before, f"{row.dest} changed"
    assert seconds < 10

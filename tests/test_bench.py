"""The benchmark machinery runs end to end on a tiny model (speed targets are checked by `cvt bench`, not here)."""

import json

import pytest
import torch

from cvt import bench
from cvt.bench import Case, build_pair, format_table, make_step, run_benchmark
from cvt.cli import main


def test_case_parsing():
    assert Case.parse("infer-224-b32") == Case("infer", 224, 32)
    with pytest.raises(ValueError, match="expected infer"):
        Case.parse("infer-224")


def test_peer_carries_the_same_weights():
    pytest.importorskip("transformers")
    models = build_pair("cvt-tiny")
    ours = models["ours"].eval()
    ours_gelu = type(ours)(ours.config.replace(activation="gelu")).eval()
    ours_gelu.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(models["hf"].eval()(x), ours_gelu(x), rtol=0, atol=1e-5)


def test_inference_cases_run_the_fused_model(monkeypatch):
    """The "ours" column is what the library runs: the fused model for inference, the reference for training."""
    calls = []
    monkeypatch.setattr(bench, "fuse", lambda m: calls.append(m) or m.fuse())
    ours = build_pair("cvt-tiny", with_peer=False)["ours"]
    make_step(ours, Case.parse("infer-64-b1"))()
    make_step(ours, Case.parse("train-64-b2"))()
    assert calls == [ours] and not ours.fused


def test_run_benchmark_tiny(tmp_path, capsys):
    pytest.importorskip("transformers")
    report = run_benchmark("cvt-tiny", ["infer-64-b2", "train-64-b2"], repeats=1, memory=False)
    pairs = {(case, impl) for case in ("infer-64-b2", "train-64-b2") for impl in ("ours", "hf")}
    assert {(r.case, r.impl) for r in report.results} == pairs
    assert report.ratio("infer-64-b2", "hf") > 0 and report.peak_gflop_per_s > 1
    assert "| infer-64-b2 |" in format_table(report)
    args = ["--model", "cvt-tiny", "--cases", "infer-64-b1", "--repeats", "1", "--no-peer"]
    assert main(["bench", *args, "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["impl"] == "ours"
    assert main(["bench", "--cases", "infer-64"]) == 2

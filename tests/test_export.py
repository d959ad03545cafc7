"""Every export format reloads and matches eager within 1e-4 on several shapes (dynamic batch and size)."""

import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.cli import main
from cvt.export import ExportError, export_model

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_norms(cvt.create_model("cvt-tiny")).eval()


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("exported-program", ".pt2")])
def test_torch_exports(tiny, tmp_path, fmt, suffix):
    keys = tiny.state_dict().keys()
    res = export_model(tiny, tmp_path / f"m{suffix}", fmt)
    assert res.max_abs_diff <= 1e-4 and len(res.checked_shapes) == 3
    assert {s[0] for s in res.checked_shapes} == {1, 2, 3}
    # the file holds the fused model (BatchNorm folded away); the model passed in is left as it was
    if fmt == "torchscript":
        graph = str(torch.jit.load(str(res.path)).inlined_graph)
        assert "silu" in graph and "batch_norm" not in graph
    else:
        graph = torch.export.load(str(res.path)).graph_module.code
        assert "silu" in graph and "batch_norm" not in graph
    assert not tiny.fused and tiny.state_dict().keys() == keys


def test_onnx_dynamic_batch_and_size(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    shapes = [(1, 3, 64, 64), (4, 3, 64, 64), (2, 3, 96, 80), (1, 3, 128, 72)]
    res = export_model(tiny, tmp_path / "m.onnx", "onnx", check_shapes=shapes)
    assert res.max_abs_diff <= 1e-4


def test_export_errors(tiny, tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(tiny, tmp_path / "m.x", "tflite")
    with pytest.raises(ExportError, match=r"\.pt2"):
        export_model(tiny, tmp_path / "m.zip", "exported-program")


def test_cli_export(tmp_path, capsys):
    assert main(["export", str(tmp_path / "tiny"), "--model", "cvt-tiny", "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "tiny.pt" in out and "max |diff|" in out and (tmp_path / "tiny.pt").exists()
    loaded = torch.jit.load(str(tmp_path / "tiny.pt"))
    assert loaded(torch.randn(5, 3, 64, 64)).shape == (5, 10)
    assert main(["export", str(tmp_path / "tiny.pt"), "--model", "cvt-tiny", "--format", "torchscript"]) == 2

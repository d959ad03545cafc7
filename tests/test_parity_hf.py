"""Parity with the peer: transformers' CvtForImageClassification (random weights, randomised norms)."""

import pytest
import torch

import cvt
from cvt.torch.weights import save_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity


def _logits(hf, x):
    with torch.no_grad():
        return hf(pixel_values=x).logits


def test_tiny_hf_loads_and_matches(hf_tiny_dir):
    """Batch sizes, a non-square input, the per-stage maps and the fused model, on the tiny peer."""
    path, hf = hf_tiny_dir
    model = cvt.create_model(weights=path)  # architecture from config.json; HF numerics (gelu)
    assert model.config.activation == "gelu" and model.load_report.ok
    fused = model.fuse()
    for shape in [(3, 3, 64, 64), (1, 3, 64, 64), (2, 3, 37, 91)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = _logits(hf, x)
            torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
            torch.testing.assert_close(fused(x), ref, rtol=0, atol=1e-5)
            hs = hf(pixel_values=x, output_hidden_states=True).hidden_states
            for a, b in zip(model.forward_intermediates(x, intermediates_only=True), hs, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cvt13_matches_transformers(hf_cvt13_dir):
    """One real-size case: the tiny peer above covers batch 1, non-square inputs and the fused model."""
    path, hf = hf_cvt13_dir
    model = cvt.create_model("cvt-13", weights=path, activation="gelu")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model(x)
        hs = hf(pixel_values=x, output_hidden_states=True)
    diff = (ours - hs.logits).abs().max().item()
    assert diff <= 1e-5, diff
    with torch.no_grad():  # the per-stage maps equal HF's hidden_states
        for a, b in zip(model.forward_intermediates(x, intermediates_only=True), hs.hidden_states, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # maps reach |x| ~ 10: relative too


def test_quick_gelu_matches_transformers_with_quick_gelu_swapped_in(hf_tiny_dir):
    """Official numerics = HF's graph with QuickGELU in the MLP (the only difference, anchors section 5)."""
    path, hf = hf_tiny_dir

    class QuickGELU(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    for layer in (lyr for stage in hf.cvt.encoder.stages for lyr in stage.layers):
        layer.intermediate.activation = QuickGELU()
    try:
        model = cvt.create_model(weights=path, activation="quick_gelu")
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), _logits(hf, x), rtol=0, atol=1e-5)
            gelu = cvt.create_model(weights=path, activation="gelu")(x)
        assert (gelu - model(x)).abs().max() > 1e-4  # the activation really matters
    finally:
        for layer in (lyr for stage in hf.cvt.encoder.stages for lyr in stage.layers):
            layer.intermediate.activation = torch.nn.GELU()


def test_our_hf_export_loads_in_transformers(tmp_path):
    model = cvt.create_model("cvt-tiny", activation="gelu").eval()
    from conftest import randomize_norms

    randomize_norms(model)
    labels = [f"class {i}" for i in range(10)]
    save_hf(model.state_dict(), model.config, tmp_path / "hf", labels=labels)
    hf = transformers.CvtForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label[3] == "class 3"
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(_logits(hf, x), model(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_cvt13_hf_export_round_trip(hf_cvt13_dir, tmp_path):
    path, hf = hf_cvt13_dir
    model = cvt.create_model("cvt-13", weights=path, activation="gelu")
    save_hf(model.state_dict(), model.config, tmp_path / "out")
    again = transformers.CvtForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(_logits(again, x), _logits(hf, x), rtol=0, atol=0)

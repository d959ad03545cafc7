"""MACs include the attention matmuls; checked against torch's FlopCounterMode on the HF peer and on ours."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cvt
from cvt.core.macs import count_macs, count_params

ANCHORS = {"cvt-13": (4.57, 16.27), "cvt-21": (7.18, 24.85), "cvt-w24": (60.92, 194.22)}  # GMACs at 224 / 384


@pytest.mark.parametrize(
    "name, res, gmacs", [(n, res, g) for n, gs in ANCHORS.items() for res, g in zip((224, 384), gs)]
)
def test_anchor_macs(name, res, gmacs):
    assert round(count_macs(cvt.get_config(name), res) / 1e9, 2) == gmacs


def _counted_macs(model, shape):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(shape))
    return counter.get_total_flops() // 2


@pytest.mark.parity
def test_macs_equal_flop_counter_on_transformers_cvt13():
    transformers = pytest.importorskip("transformers")
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000)).eval()
    # HF computes attention with einsum -> bmm, which FlopCounterMode sees
    assert _counted_macs(hf, (1, 3, 224, 224)) == count_macs(cvt.get_config("cvt-13"), 224)


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
def test_macs_equal_flop_counter_on_ours(method):
    import dataclasses

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cvt.torch.model import CvT

    base = cvt.get_config("cvt-tiny")
    cfg = base.replace(stages=tuple(dataclasses.replace(s, qkv_proj_method=method) for s in base.stages))
    model = CvT(cfg).eval()
    for h, w in ((64, 64), (40, 72)):
        # SDPA's math backend spells attention as matmuls, which FlopCounterMode sees (the fused kernels it misses)
        with sdpa_kernel(SDPBackend.MATH):
            assert _counted_macs(model, (1, 3, h, w)) == count_macs(cfg, h, w), (method, h, w)


@pytest.mark.parametrize("name", ["cvt-13", "cvt-21", "cvt-tiny"])
def test_param_formula_equals_model(name):
    from cvt.torch.model import CvT

    with torch.device("meta"):
        model = CvT(cvt.get_config(name))
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())

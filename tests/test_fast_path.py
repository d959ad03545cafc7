"""Inference rewrites (BN folded into depthwise convs, QuickGELU as SiLU with folded scales) are exact."""

import dataclasses

import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.layers import ConvProjection, Mlp, QuickGELU, fast_path
from cvt.model import CvT


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
def test_fast_path_equals_reference_path(activation, method):
    base = cvt.get_config("cvt-tiny")
    cfg = base.replace(
        activation=activation, stages=tuple(dataclasses.replace(s, qkv_proj_method=method) for s in base.stages)
    )
    model = randomize_norms(CvT(cfg)).eval()
    x = torch.randn(3, 3, 64, 80)
    ref = model(x)  # grad enabled: the reference (unfused) path
    with torch.inference_mode():
        fast = model(x)
    with torch.no_grad():
        fast2 = model(x)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast2, ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fast_path_equals_reference_path_cvt13():
    model = randomize_norms(cvt.create_model("cvt-13")).eval()
    x = torch.randn(2, 3, 224, 224)
    ref = model(x)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_fast_path_only_in_eval_without_grad():
    m = ConvProjection(8, 3, 2, 1)
    assert not fast_path(m)  # train mode
    m.eval()
    assert not fast_path(m)  # grad enabled: parameters must get gradients
    with torch.no_grad():
        assert fast_path(m)


def test_folded_weights_follow_parameter_updates():
    proj = randomize_norms(ConvProjection(8, 3, 2, 1)).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        first = proj(x)
        proj.bn.running_var.mul_(4)  # in-place update (what load_state_dict / BN momentum do)
        second = proj(x)
        torch.testing.assert_close(second, proj.bn(proj.conv(x)))
    assert not torch.allclose(first, second)
    mlp = Mlp(8, 32, QuickGELU()).eval()
    y = torch.randn(2, 5, 8)
    with torch.no_grad():
        mlp(y)
        mlp.fc1.weight.add_(0.5)
        torch.testing.assert_close(mlp(y), mlp.fc2(mlp.act(mlp.fc1(y))), rtol=1e-5, atol=1e-6)


def test_state_dict_unchanged_by_inference():
    model = randomize_norms(cvt.create_model("cvt-tiny")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_quick_gelu_mlp_training_gradients_equal_reference():
    torch.manual_seed(0)
    mlp = Mlp(16, 64, QuickGELU()).train()
    x = torch.randn(4, 7, 16, requires_grad=True)
    mlp(x).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in mlp.named_parameters()} | {"x": x.grad.clone()}
    mlp.zero_grad()
    x.grad = None
    ref = mlp.fc2(mlp.act(mlp.fc1(x)))  # the textbook composition x * sigmoid(1.702 x)
    ref.square().sum().backward()
    for n, p in mlp.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
    torch.testing.assert_close(fast["x"], x.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
def test_cls_only_last_block_equals_full_path(method):
    base = cvt.get_config("cvt-tiny")
    cfg = base.replace(stages=tuple(dataclasses.replace(s, qkv_proj_method=method) for s in base.stages))
    model = randomize_norms(CvT(cfg)).eval()
    x = torch.randn(3, 3, 72, 64)
    with torch.no_grad():
        full = model.forward_head(model.forward_features(x))  # every token through the last block
        torch.testing.assert_close(model(x), full, rtol=0, atol=1e-5)
        cls = model.stages[-1].forward_cls(model.forward_intermediates(x, indices=[1])[0])
        torch.testing.assert_close(cls, model.forward_features(x)[:, :1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_no_graph_breaks_under_torch_compile(training):
    """Dynamo traces the whole model in one graph (explain() traces without compiling: fast)."""
    model = cvt.create_model("cvt-tiny").train(training)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

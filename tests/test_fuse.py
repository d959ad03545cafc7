"""One reference path, and one explicit inference rewrite (``cvt.fuse``) that is exact and leaves no caches."""

import dataclasses

import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.core.errors import UsageError
from cvt.torch.fusion import ClsOnlyStage, SiLUMlp, fuse
from cvt.torch.layers import ConvProjection
from cvt.torch.model import CvT

CLS_LAYOUTS = [(False, False, True), (False, False, False), (True, True, True)]


def tiny(method="dw_bn", cls=(False, False, True), activation="quick_gelu"):
    base = cvt.get_config("cvt-tiny")
    stages = tuple(dataclasses.replace(s, qkv_proj_method=method, cls_token=c) for s, c in zip(base.stages, cls))
    return randomize_norms(CvT(base.replace(stages=stages, activation=activation))).eval()


def _tensors(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Every tensor reachable from the modules' attributes (parameters, buffers, and anything else)."""
    found: dict[int, torch.Tensor] = {}

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            found[id(value)] = value
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)

    for m in model.modules():
        walk(vars(m))
    return found


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
@pytest.mark.parametrize("cls", CLS_LAYOUTS)
def test_fused_equals_reference(activation, method, cls):
    model = tiny(method, cls, activation)
    x = torch.randn(3, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
    fused = fuse(model)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused(x[:1]), ref[:1], rtol=0, atol=1e-5)  # batch 1, grad enabled
    # what was rewritten: BN folded (dw_bn), SiLU MLPs (quick_gelu), cls-only last stage (cls token)
    assert not any(isinstance(m, (ConvProjection, torch.nn.BatchNorm2d)) for m in fused.modules())
    assert any(isinstance(m, SiLUMlp) for m in fused.modules()) == (activation == "quick_gelu")
    assert isinstance(fused.stages[-1], ClsOnlyStage) == cls[-1]


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
def test_fused_without_cls_only_keeps_every_token(method):
    model = tiny(method)
    x = torch.randn(2, 3, 72, 64)
    fused = fuse(model, cls_only=False)
    with torch.no_grad():
        torch.testing.assert_close(fused.forward_features(x), model.forward_features(x), rtol=0, atol=1e-5)
        maps = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(fused.forward_intermediates(x, intermediates_only=True), maps, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(fused.forward_attention(x)[-1][-1], model.forward_attention(x)[-1][-1])
        cls_only = fuse(model)
        assert cls_only.forward_features(x).shape == (2, 1, 48)  # only the cls token (module docstring)
        torch.testing.assert_close(cls_only.forward_features(x), model.forward_features(x)[:, :1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fused_equals_reference_cvt13():
    model = randomize_norms(cvt.create_model("cvt-13")).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    with torch.inference_mode():
        torch.testing.assert_close(model.fuse()(x), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", [(False, False, True), (False, False, False)])
def test_forward_is_forward_head_of_forward_features(cls):
    model = tiny(cls=cls)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))
    model.train()  # dropout / drop path draw the same numbers from the same RNG state
    state = torch.random.get_rng_state()
    out = model(x)
    torch.random.set_rng_state(state)
    assert torch.equal(out, model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("fused", [False, True])
def test_no_tensors_cached_on_modules_after_inference(fused):
    model = fuse(tiny()) if fused else tiny()
    before = _tensors(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model(x)
        if not fused:
            model.forward_intermediates(x)
            model.forward_attention(x)
    with torch.no_grad():
        model(x)
    model(x).sum().backward()  # eval mode with autograd
    after = _tensors(model)
    assert after.keys() == before.keys(), sorted(set(map(str, after.keys() - before.keys())))
    # the helper sees a cache if there is one
    model.stages[0].patch_embed._cached = torch.zeros(3)
    assert len(_tensors(model)) == len(before) + 1


def test_state_dict_unchanged_by_inference():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fuse_returns_a_copy_unless_inplace():
    model = tiny().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert fused is not model and model.training and not model.fused  # the reference is untouched
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, ConvProjection) for m in model.modules()) == 3 * 6  # q, k, v in 6 blocks
    model.train()  # the reference still trains
    same = model.fuse(inplace=True)
    assert same is model and model.fused and not model.training
    with pytest.raises(UsageError, match="already fused"):
        fuse(model)


def test_fuse_is_importable_and_callable_from_the_package():
    import cvt
    import cvt.torch.fusion
    import cvt.torch.model
    from cvt.torch.fusion import fuse as function

    assert cvt.fuse is function  # the package name is the function, whatever was imported first
    model = tiny()
    x = torch.randn(1, 3, 64, 64)
    for f in (cvt.fuse, function, cvt.torch.model.CvT.fuse):
        with torch.no_grad():
            torch.testing.assert_close(f(model)(x), model(x), rtol=0, atol=1e-5)


def test_fused_model_refuses_training():
    fused = fuse(tiny())
    with pytest.raises(UsageError, match="fused") as e:
        fused.train()
    assert "\n" not in str(e.value)
    assert not fused.training and not any(m.training for m in fused.modules())  # nothing switched half-way
    assert fused.eval() is fused and fused.train(False) is fused
    assert "fused" in repr(fused).splitlines()[1]  # CvT(\n  name=..., fused


def test_explain_needs_every_token():
    from cvt.explain import cls_attention

    model = tiny()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(cls_attention(fuse(model, cls_only=False), x), cls_attention(model, x))
    with pytest.raises(UsageError, match="cls_only=False"):
        cls_attention(fuse(model), x)


@pytest.mark.parametrize("which", ["reference-eval", "reference-train", "fused"])
def test_no_graph_breaks_under_torch_compile(which):
    """Dynamo traces the whole model in one graph (explain() traces without compiling: fast)."""
    model = cvt.create_model("cvt-tiny")
    model = model.fuse() if which == "fused" else model.train(which == "reference-train")
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

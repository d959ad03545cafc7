import dataclasses

import pytest
import torch

import cvt
from cvt.torch.layers import merge_heads
from cvt.torch.model import CvT


def tiny(method="dw_bn", cls=(False, False, True), **kw):
    base = cvt.get_config("cvt-tiny")
    stages = tuple(dataclasses.replace(s, qkv_proj_method=method, cls_token=c) for s, c in zip(base.stages, cls))
    return base.replace(stages=stages, **kw)


@pytest.mark.parametrize(
    "name, params, entries",
    [("cvt-13", 19_997_480, 459), ("cvt-21", 31_622_696, 731), ("cvt-w24", 277_196_392, 833)],
)
def test_parameter_and_entry_counts(name, params, entries):
    with torch.device("meta"):  # shapes only: w24 would take seconds and 1 GB to initialise
        model = CvT(cvt.get_config(name))
    assert cvt.count_parameters(model) == params
    assert cvt.count_params(model.config) == params
    assert len(model.state_dict()) == entries


def test_shapes_at_224_and_384():
    model = cvt.create_model("cvt-13").eval()
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 56, 56), (2, 192, 28, 28), (2, 384, 14, 14)]
    final, feats = model.forward_intermediates(torch.randn(1, 3, 384, 384))
    assert [f.shape[-1] for f in feats] == [96, 48, 24] and final.shape == (1, 1 + 24 * 24, 384)  # cls first
    assert model(x).shape == (2, 1000)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert [f["num_chs"] for f in model.feature_info] == [64, 192, 384]


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 46, 187), (3, 3, 33, 17)])
def test_batch_size_one_and_non_square(shape):
    model = cvt.create_model("cvt-tiny").eval()
    assert model(torch.randn(shape)).shape == (shape[0], 10)


@pytest.mark.slow
def test_cvt13_non_square_184x750():
    model = cvt.create_model("cvt-13").eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 184, 750)).shape == (1, 1000)


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
@pytest.mark.parametrize("cls", [(False, False, True), (False, False, False), (True, True, True)])
def test_eval_is_batch_invariant(method, cls):
    model = CvT(tiny(method, cls)).eval()
    x = torch.randn(4, 3, 64, 48)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
@pytest.mark.parametrize("cls", [(False, False, True), (False, False, False)])
def test_every_parameter_gets_a_gradient(method, cls):
    model = CvT(tiny(method, cls)).train()
    # all tokens in the loss: with a cls-token head, the last block's spatial queries only reach the tokens
    tokens = model.forward_features(torch.randn(2, 3, 64, 64))
    (tokens.square().mean() + model.forward_head(tokens).square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_projection_methods_have_their_structure():
    def conv_params(attn, which):
        return sum(p.numel() for p in getattr(attn, f"conv_proj_{which}").parameters())

    for method in ("dw_bn", "avg", "linear"):
        model = CvT(tiny(method))
        attn = model.stages[1].blocks[0].attn
        bns = [m for m in model.stages[1].blocks[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(bns) == (3 if method == "dw_bn" else 0)  # one BN per q, k, v projection
        assert conv_params(attn, "q") == (32 * 9 + 2 * 32 if method == "dw_bn" else 0)  # avg: q is linear
        assert conv_params(attn, "k") == conv_params(attn, "v") == conv_params(attn, "q")
    # the stride-2 key/value projection quarters the key tokens (avg pools in ceil mode); linear keeps them
    for method, kv in (("dw_bn", 8 * 8), ("avg", 9 * 9), ("linear", 16 * 16)):
        maps = CvT(tiny(method)).forward_attention(torch.randn(1, 3, 64, 64))
        assert maps[0][0].shape == (1, 1, 16 * 16, kv)
    maps = CvT(tiny("dw_bn")).forward_attention(torch.randn(1, 3, 64, 64))
    assert maps[2][0].shape == (1, 3, 4 * 4 + 1, 2 * 2 + 1)  # cls token first in q and kv
    assert [len(m) for m in maps] == [1, 2, 3]


def test_attention_maps_reproduce_the_forward_pass():
    """The explicit softmax weights of ``forward_attention``, applied to v, give the SDPA output of each block."""
    model = CvT(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = model.forward_attention(x)
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for stage in maps for a in stage)
    with torch.no_grad():
        tokens, h, w = model.stages[0].embed(x)
        blk = model.stages[0].blocks[0]
        y = blk.norm1(tokens)
        _, _, v = blk.attn.qkv(y, h, w)
        explicit = blk.attn.proj(merge_heads(maps[0][0] @ v))
        torch.testing.assert_close(explicit, blk.attn(y, h, w), rtol=1e-5, atol=1e-5)


def test_head_api():
    model = cvt.create_model("cvt-tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 48)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    assert model.no_weight_decay() == {"stages.2.cls_token"}
    assert cvt.create_model("cvt-tiny", num_classes=0)(x).shape == (2, 48)


def test_no_cls_token_head_is_norm_then_mean():
    model = CvT(tiny(cls=(False, False, False))).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 16, 48)
    expected = model.head(model.norm(tokens).mean(1))
    torch.testing.assert_close(model(x), expected)


def test_forward_intermediates_indices_and_stop_early():
    model = cvt.create_model("cvt-tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    final, all_maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    assert [m.shape[1] for m in model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)] == [16, 32]
    torch.testing.assert_close(model.forward_intermediates(x, indices=1, intermediates_only=True)[0], all_maps[-1])
    torch.testing.assert_close(model.forward_intermediates(x, indices=[-1])[1][0], all_maps[-1])
    early, maps = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert early.shape == (1, 16 * 16, 16) and len(maps) == 1  # the tokens of the last stage run
    for bad in ([], [3], [-4], 0, 4):  # out of range raises (no silent wrap-around)
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)


def test_grad_checkpointing_same_outputs_and_grads():
    model = cvt.create_model("cvt-tiny").train()
    x = torch.randn(2, 3, 64, 64)
    state = torch.random.get_rng_state()
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.random.set_rng_state(state)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_init_follows_official_rules():
    model = cvt.create_model("cvt-13")
    blk = model.stages[2].blocks[3]
    assert blk.attn.proj_q.bias.abs().sum() == 0 and 0.015 < blk.attn.proj_q.weight.std() < 0.025
    assert blk.attn.conv_proj_q.bn.weight.eq(1).all() and blk.norm1.bias.eq(0).all()
    assert 0.015 < model.head.weight.std() < 0.025 and model.head.bias.abs().sum() > 0  # default uniform bias
    # convolutions keep PyTorch's kaiming-uniform: bound = 1/sqrt(fan_in) = 1/sqrt(9) for depthwise 3x3
    w = blk.attn.conv_proj_k.conv.weight
    assert w.abs().max() <= 1 / 3 + 1e-6 and w.std() > 0.1
    xav = cvt.create_model("cvt-tiny", init="xavier")
    assert xav.config.init == "xavier"


def test_too_small_input_is_a_clear_error():
    model = cvt.create_model("cvt-13").eval()
    with pytest.raises(ValueError, match="empty"):
        model(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 224, 224))


def test_dropout_and_drop_path_only_in_training():
    cfg = tiny()
    stages = tuple(dataclasses.replace(s, drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5) for s in cfg.stages)
    model = CvT(cfg.replace(stages=stages))
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_autocast_keeps_finite_outputs():
    model = cvt.create_model("cvt-tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x), rtol=0, atol=0.1)  # LayerNorm in float32: close to fp32

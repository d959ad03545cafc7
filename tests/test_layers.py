"""Each building block of ``cvt.torch.layers`` alone: shapes against the core geometry, the attention arithmetic
against a manual computation, stochastic depth, float32 LayerNorm; a block built from a stage config by the core's
``block_args``, and the core's checks in the modules."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_norms
from cvt.core.config import StageConfig, block_args, conv_out
from cvt.core.errors import ConfigError
from cvt.torch.layers import (
    Attention,
    Block,
    ConvEmbed,
    ConvProjection,
    DropPath,
    LayerNorm,
    Mlp,
    QuickGELU,
    build_projection,
    make_activation,
    merge_heads,
    split_heads,
    to_tokens,
    tokens_to_map,
)


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 3, 37, 91)])
def test_conv_embed_shape_and_channel_norm(shape):
    embed = ConvEmbed(3, 16, patch_size=7, stride=4, padding=2)
    out = embed(torch.randn(shape))
    h, w = conv_out(shape[2], 7, 4, 2), conv_out(shape[3], 7, 4, 2)
    assert out.shape == (shape[0], 16, h, w)
    # LayerNorm over channels (affine 1/0 at init): every position has mean 0 and unit variance across C
    torch.testing.assert_close(out.mean(1), torch.zeros(shape[0], h, w), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(shape[0], h, w), atol=1e-3, rtol=0)


def test_tokens_and_maps_round_trip():
    fmap = torch.randn(2, 8, 5, 3).to(memory_format=torch.channels_last)
    tokens = to_tokens(fmap)
    assert tokens.shape == (2, 15, 8) and tokens.data_ptr() == fmap.data_ptr()  # a view, no copy
    back = tokens_to_map(tokens.contiguous(), 5, 3)
    torch.testing.assert_close(back, fmap, rtol=0, atol=0)
    assert back.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(merge_heads(split_heads(x, 3)), x, rtol=0, atol=0)
    assert split_heads(x, 3).shape == (2, 3, 7, 4)


@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (6, 9), (1, 3), (2, 2)])
def test_projection_shapes_equal_the_core_geometry(method, padding, hw):
    """The modules and ``StageConfig.projected_shape`` agree, ``avg``'s ceil mode included."""
    cfg = StageConfig(8, 1, 1, qkv_proj_method=method, padding_kv=padding, padding_q=1)
    h, w = hw
    for kind, stride, pad, m in (("kv", 2, padding, method), ("q", 1, 1, cfg.q_method)):
        expected = cfg.projected_shape(h, w, kind)
        if min(expected) < 1:
            continue  # the config's validation refuses such maps
        proj = build_projection(m, 8, 3, stride, pad).eval()
        assert proj(torch.randn(2, 8, h, w)).shape[-2:] == expected, (kind, method, padding, hw)
    assert cfg.kv_shape(h, w) == cfg.projected_shape(h, w, "kv")


def test_avg_pools_in_ceil_mode_and_keeps_queries():
    cfg = StageConfig(8, 1, 1, qkv_proj_method="avg")
    assert cfg.q_method == "linear"  # official: avg pools keys and values only
    assert cfg.kv_shape(6, 7) == (4, 4)  # floor mode would give 3x4
    attn = Attention(8, 2, q_method=cfg.q_method, kv_method="avg")
    assert not list(attn.conv_proj_q.parameters()) and not list(attn.conv_proj_k.parameters())


def test_conv_projection_is_depthwise_conv_then_batchnorm():
    proj = randomize_norms(ConvProjection(8, 3, 2, 1)).eval()
    x = torch.randn(2, 8, 9, 9)
    expected = F.batch_norm(
        F.conv2d(x, proj.conv.weight, None, 2, 1, groups=8),
        proj.bn.running_mean,
        proj.bn.running_var,
        proj.bn.weight,
        proj.bn.bias,
        eps=1e-5,
    )
    torch.testing.assert_close(proj(x), expected)
    assert proj.conv.bias is None and proj.conv.groups == 8


@pytest.mark.parametrize("cls", [False, True])
@pytest.mark.parametrize("method", ["dw_bn", "avg", "linear"])
def test_attention_shapes(cls, method):
    q_method = "linear" if method == "avg" else method
    attn = randomize_norms(Attention(12, 3, q_method=q_method, kv_method=method, with_cls_token=cls)).eval()
    h, w = 6, 5
    x = torch.randn(2, h * w + cls, 12)
    assert attn(x, h, w).shape == x.shape
    kh, kw = StageConfig(12, 1, 3, qkv_proj_method=method).kv_shape(h, w)
    assert attn.attention_weights(x, h, w).shape == (2, 3, h * w + cls, kh * kw + cls)


@pytest.mark.parametrize("cls", [False, True])
def test_attention_uses_full_width_scale(cls):
    """With identity projections the block is plain attention: check it against a hand-written softmax."""
    torch.manual_seed(0)
    dim, heads, h, w = 12, 3, 4, 3
    attn = Attention(dim, heads, q_method="linear", kv_method="linear", with_cls_token=cls).eval()
    x = torch.randn(2, h * w + cls, dim)
    q, k, v = (split_heads(lin(x), heads) for lin in (attn.proj_q, attn.proj_k, attn.proj_v))
    weights = (q @ k.transpose(-2, -1) / dim**0.5).softmax(-1)  # full width, not head width
    torch.testing.assert_close(attn.attention_weights(x, h, w), weights)
    torch.testing.assert_close(attn(x, h, w), attn.proj(merge_heads(weights @ v)))
    head_scaled = (q @ k.transpose(-2, -1) / (dim // heads) ** 0.5).softmax(-1)
    assert not torch.allclose(attn(x, h, w), attn.proj(merge_heads(head_scaled @ v)), atol=1e-4)


def test_attention_weights_reproduce_forward_with_convolutions():
    attn = randomize_norms(Attention(12, 3, with_cls_token=True)).eval()
    x = torch.randn(2, 1 + 7 * 6, 12)
    weights = attn.attention_weights(x, 7, 6)
    _, _, v = attn.qkv(x, 7, 6)
    torch.testing.assert_close(attn(x, 7, 6), attn.proj(merge_heads(weights @ v)))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 1 + 7 * 6))


def test_cls_token_skips_the_convolutions():
    """The cls token enters q/k/v unprojected by the depthwise convs: changing it leaves the maps' convs alone."""
    attn = randomize_norms(Attention(8, 2, with_cls_token=True)).eval()
    x = torch.randn(1, 1 + 16, 8)
    q, k, _ = attn.qkv(x, 4, 4)
    y = x.clone()
    y[:, 0] += 1.0
    q2, k2, _ = attn.qkv(y, 4, 4)
    torch.testing.assert_close(q2[:, :, 1:], q[:, :, 1:])  # spatial queries unchanged
    torch.testing.assert_close(k2[:, :, 1:], k[:, :, 1:])
    torch.testing.assert_close(q2[:, :, 0], split_heads(attn.proj_q(y[:, :1]), 2)[:, :, 0])


def test_drop_path_identity_in_eval_and_per_sample_in_training():
    dp = DropPath(0.5)
    x = torch.ones(256, 3, 4)
    assert dp.eval()(x) is x
    out = dp.train()(x)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2.0).all(1)).all()  # whole samples, rescaled by 1/keep
    assert 0.3 < (per_sample[:, 0] == 0).float().mean() < 0.7
    assert DropPath(0.0).train()(x) is x


def test_layer_norm_computes_in_float32():
    ln = randomize_norms(LayerNorm(16))
    y = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    assert ln(y).dtype == torch.bfloat16
    ref = F.layer_norm(y.float(), (16,), ln.weight, ln.bias, 1e-5).to(torch.bfloat16)
    torch.testing.assert_close(ln(y), ref, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(y).dtype == torch.bfloat16  # F.layer_norm alone would return float32 under autocast
    ln_bf16 = LayerNorm(16).to(torch.bfloat16)
    assert ln_bf16(y).dtype == torch.bfloat16


def test_quick_gelu_and_mlp():
    z = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(QuickGELU()(z), z * torch.sigmoid(1.702 * z))
    assert (QuickGELU()(z) - F.gelu(z)).abs().max() < 0.03  # close to GELU, not equal
    mlp = Mlp(8, 32, QuickGELU()).eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(mlp(x), mlp.fc2(QuickGELU()(mlp.fc1(x))))


def test_quick_gelu_gradient_is_the_textbook_one():
    z = torch.randn(4, 33, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(QuickGELU(), (z,))
    QuickGELU()(z).sum().backward()
    s = torch.sigmoid(1.702 * z.detach())
    torch.testing.assert_close(z.grad, s + 1.702 * z.detach() * s * (1 - s))


def test_quick_gelu_mlp_training_gradients_equal_the_written_out_composition():
    mlp = Mlp(16, 64, QuickGELU()).train()
    x = torch.randn(4, 7, 16, requires_grad=True)
    mlp(x).square().sum().backward()
    ours = {n: p.grad.clone() for n, p in mlp.named_parameters()} | {"x": x.grad.clone()}
    mlp.zero_grad()
    x.grad = None
    h = mlp.fc1(x)
    mlp.fc2(h * torch.sigmoid(1.702 * h)).square().sum().backward()  # what autograd does without the Function
    for n, p in mlp.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
    torch.testing.assert_close(ours["x"], x.grad, rtol=1e-5, atol=1e-6)


def test_block_is_pre_norm_residual():
    blk = randomize_norms(Block(12, 3, with_cls_token=True)).eval()
    x = torch.randn(2, 1 + 16, 12)
    a = x + blk.attn(blk.norm1(x), 4, 4)
    torch.testing.assert_close(blk(x, 4, 4), a + blk.mlp(blk.norm2(a)))
    with torch.no_grad():
        for lin in (blk.attn.proj, blk.mlp.fc2):  # zero both residual branches: the block is the identity
            lin.weight.zero_()
            lin.bias.zero_()
    torch.testing.assert_close(blk(x, 4, 4), x, rtol=0, atol=0)


def test_block_args_map_a_stage_config_to_a_block():
    """``block_args`` is the one mapping from a stage's config to a block's arguments (every front-end uses it)."""
    stage = StageConfig(12, 2, 3, qkv_proj_method="avg", cls_token=True, drop_rate=0.1, attn_drop_rate=0.2,
                        stride_kv=3, padding_kv=0, mlp_ratio=2.0)  # fmt: skip
    blk = Block(**block_args(stage, 0.05, "gelu", 1e-6))
    assert blk.drop_path.p == 0.05 and blk.norm1.eps == blk.norm2.eps == 1e-6 and isinstance(blk.mlp.act, nn.GELU)
    assert blk.mlp.fc1.out_features == 24 and blk.mlp.drop.p == blk.attn.proj_drop.p == 0.1
    assert blk.attn.attn_drop == 0.2 and blk.attn.num_heads == 3 and blk.attn.with_cls_token
    assert isinstance(blk.attn.conv_proj_q, nn.Identity)  # avg pools keys and values only
    assert (blk.attn.conv_proj_k.kernel_size, blk.attn.conv_proj_k.stride, blk.attn.conv_proj_k.padding) == (3, 3, 0)
    hk, wk = stage.kv_shape(7, 5)
    assert blk.attn.attention_weights(torch.randn(1, 1 + 35, 12), 7, 5).shape == (1, 3, 1 + 35, 1 + hk * wk)


def test_modules_refuse_what_the_config_refuses():
    """The front-end modules check with the core's rules and messages (a ``ConfigError`` is a ``ValueError``)."""
    with pytest.raises(ConfigError, match=r"^num_heads: 5 heads do not divide embed_dim 12$"):
        Attention(12, 5)
    with pytest.raises(ConfigError, match=r"^activation: 'relu' is not one of"):
        make_activation("relu")
    with pytest.raises(ConfigError, match=r"^qkv_proj_method: 'conv' is not one of"):
        build_projection("conv", 8, 3, 1, 1)

"""CvT building blocks: convolutional token embedding, convolutional projection attention, MLP, block.

Nothing here knows about configs: every module takes plain typed arguments, so each can be tested alone
(:func:`cvt.core.config.block_args` turns a stage's config into a ``Block``'s arguments, for every front-end).
Parameter names equal the official checkpoint's (``patch_embed.proj``, ``attn.conv_proj_q.conv/bn``,
``attn.proj_q``, ``attn.proj``, ``mlp.fc1``, ``norm1`` ...), which makes official conversion a rename of
``stage{i}`` to ``stages.{i}``.

This is the reference formulation: one forward per module, no caches, no branches on the mode besides
dropout and stochastic depth. Inference rewrites (folded BatchNorm, SiLU MLP, cls-only last block) are an
explicit separate step: :func:`cvt.fuse`.

Shapes: ``B`` batch, ``C`` width, ``H x W`` the stage's map, ``N = H*W (+1 with a cls token)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import QUICK_GELU_ALPHA, check_activation, check_proj_method, head_width


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation the released CvT weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuickGELUFunction.apply(x)


class _QuickGELUFunction(torch.autograd.Function):
    """``x * sigmoid(a x) = silu(a x) / a`` (a = 1.702), whose derivative is ``silu'(a x)``: exact.

    NOTE: written out, autograd runs 3 kernels forward and about 5 backward and keeps two hidden-size tensors
    per MLP for backward; this runs one SiLU kernel each way and keeps one: the cvt-13 train step is ~5% faster
    (as fast as folding 1.702 into the MLP weights at every call, while :class:`Mlp` stays the textbook one).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        u = x * QUICK_GELU_ALPHA
        ctx.save_for_backward(u)
        return F.silu(u).div_(QUICK_GELU_ALPHA)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (u,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.silu_backward(grad, u)


def make_activation(name: str) -> nn.Module:
    """``quick_gelu`` (official) or ``gelu`` (exact erf GELU, what HF transformers runs)."""
    return QuickGELU() if check_activation(name) == "quick_gelu" else nn.GELU()


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always computes in float32 and returns the input dtype (safe under fp16/bf16).

    The official model does the same; under autocast ``F.layer_norm`` alone would return float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            out = F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return out.to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class ConvEmbed(nn.Module):
    """Convolutional token embedding: ``proj`` conv (with bias) then LayerNorm over channels.

    ``(B, C_in, H_in, W_in) -> (B, C, H, W)`` with ``H = floor((H_in + 2p - k) / s) + 1``.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W)
        # LayerNorm over C: normalise in channels-last view, hand back NCHW (a view, no copy).
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """The depthwise half of CvT's convolutional projection: ``conv`` (depthwise, no bias) + ``bn``.

    ``(B, C, H, W) -> (B, C, H', W')``; the pointwise half is the ``proj_q/k/v`` Linear in :class:`Attention`.
    """

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def build_projection(method: str, dim: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
    """``dw_bn``: depthwise conv + BN; ``avg``: average pooling (ceil mode, as official); ``linear``: identity."""
    if check_proj_method(method) == "dw_bn":
        return ConvProjection(dim, kernel_size, stride, padding)
    if method == "avg":
        return nn.AvgPool2d(kernel_size, stride=stride, padding=padding, ceil_mode=True)
    return nn.Identity()


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (a view when ``x`` is channels-last, as every map here is)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)`` in channels-last memory: a view of dense tokens, no copy.

    NOTE: spelled view + permute, not transpose + reshape: for batch 1 the latter gives a batch stride that
    makes PyTorch treat the map as NCHW, copy it, and run the depthwise convolutions 2-10x slower.
    """
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, C) -> (B, heads, N, C/heads)``."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d) -> (B, N, heads*d)``."""
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


class Attention(nn.Module):
    """Multi-head attention with convolutional projection (paper section 3.2).

    Queries are projected with ``q_method`` at ``stride_q`` (1: the map's resolution), keys and values with
    ``kv_method`` at ``stride_kv`` (sub-sampled). The cls token, if any, skips the convolutions and is
    prepended to q, k and v before ``proj_q/k/v``. Scores are scaled by ``dim ** -0.5`` over the FULL width,
    not the head width, as in the official code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        q_method: str = "dw_bn",
        kv_method: str = "dw_bn",
        kernel_size: int = 3,
        stride_q: int = 1,
        stride_kv: int = 2,
        padding_q: int = 1,
        padding_kv: int = 1,
        with_cls_token: bool = False,
    ):
        super().__init__()
        head_width(dim, num_heads)  # the heads must divide the width
        self.num_heads = num_heads
        self.scale = dim**-0.5  # NOTE: full width, CvT's choice; SDPA's default would be head_dim ** -0.5
        self.with_cls_token = with_cls_token
        self.attn_drop = attn_drop
        self.conv_proj_q = build_projection(q_method, dim, kernel_size, stride_q, padding_q)
        self.conv_proj_k = build_projection(kv_method, dim, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = build_projection(kv_method, dim, kernel_size, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: (B, N, C)`` -> q ``(B, heads, Nq, C/heads)``, k and v ``(B, heads, Nk, C/heads)``."""
        if self.with_cls_token:
            # NOTE: the slice x[:, 1:] is not a dense channels-last map; depthwise convs on such strides
            # take a slow path in oneDNN (up to 10x), so pay for one small copy instead.
            cls, x = x[:, :1], x[:, 1:].contiguous()
        fmap = tokens_to_map(x, h, w)  # (B, C, H, W)
        q = to_tokens(self.conv_proj_q(fmap))  # (B, Hq*Wq, C)
        k = to_tokens(self.conv_proj_k(fmap))  # (B, Hk*Wk, C)
        v = to_tokens(self.conv_proj_v(fmap))
        if self.with_cls_token:
            q, k, v = (torch.cat((cls, t), dim=1) for t in (q, k, v))
        n = self.num_heads
        return split_heads(self.proj_q(q), n), split_heads(self.proj_k(k), n), split_heads(self.proj_v(v), n)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``x: (B, N, C)`` tokens of an ``h x w`` map (cls first, if any) -> ``(B, Nq, C)``."""
        q, k, v = self.qkv(x, h, w)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)  # (B, heads, Nq, d)
        return self.proj_drop(self.proj(merge_heads(out)))

    def attention_weights(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The softmax weights :meth:`forward` applies (no dropout): ``x: (B, N, C)`` -> ``(B, heads, Nq, Nk)``."""
        q, k, _ = self.qkv(x, h, w)
        return (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; stochastic depth on the residual branches only.

    ``x = x + drop_path(attn(norm1(x)))``; ``x = x + drop_path(mlp(norm2(x)))``. ``drop``: the dropout after
    the attention's projection and in the MLP; ``attn_kwargs``: the rest of :class:`Attention`'s arguments. A stage
    builds its blocks as ``Block(**cvt.core.config.block_args(stage, rate, activation, eps))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        drop: float = 0.0,
        activation: str = "quick_gelu",
        eps: float = 1e-5,
        **attn_kwargs: object,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, proj_drop=drop, **attn_kwargs)  # type: ignore[arg-type]
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), make_activation(activation), drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``x: (B, N, C)`` tokens of an ``h x w`` map (cls first, if any) -> ``(B, N, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))

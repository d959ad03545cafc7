"""CvT building blocks: convolutional token embedding, convolutional projection attention, MLP, block.

Nothing here knows about configs: every module takes plain typed arguments, so each can be tested alone.
Parameter names equal the official checkpoint's (``patch_embed.proj``, ``attn.conv_proj_q.conv/bn``,
``attn.proj_q``, ``attn.proj``, ``mlp.fc1``, ``norm1`` ...), which makes official conversion a rename of
``stage{i}`` to ``stages.{i}``.

Shapes: ``B`` batch, ``C`` width, ``H x W`` the stage's map, ``N = H*W (+1 with a cls token)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUICK_GELU_ALPHA = 1.702


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation the released CvT weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


def fast_path(module: nn.Module) -> bool:
    """True where inference-only rewrites apply: eval mode, no autograd, not being traced by a compiler.

    The rewrites (BatchNorm folded into the depthwise convolutions, QuickGELU as one SiLU kernel with its
    scales folded into the MLP weights) leave parameters and state dict untouched; they are cached per
    parameter version, so an optimizer step or ``load_state_dict`` invalidates them.
    """
    return not module.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _version_key(*tensors: torch.Tensor) -> tuple:
    return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()  # exact erf GELU, what HF transformers runs
    raise ValueError(f"activation: unknown {name!r} (use 'quick_gelu' or 'gelu')")


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

        self._folded: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single depthwise conv equal to ``bn(conv(x))`` in eval mode."""
        bn = self.bn
        key = _version_key(self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if self._folded is None or self._folded[0] != key:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C,)
            weight = self.conv.weight * scale.view(-1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self) and self.bn.track_running_stats and self.bn.running_var is not None:
            weight, bias = self.folded()
            c = self.conv
            return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
        return self.bn(self.conv(x))


def build_projection(method: str, dim: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
    """``dw_bn``: depthwise conv + BN; ``avg``: average pooling (ceil mode, as official); ``linear``: identity."""
    if method == "dw_bn":
        return ConvProjection(dim, kernel_size, stride, padding)
    if method == "avg":
        return nn.AvgPool2d(kernel_size, stride=stride, padding=padding, ceil_mode=True)
    if method == "linear":
        return nn.Identity()
    raise ValueError(f"qkv_proj_method: unknown {method!r} (use 'dw_bn', 'avg' or 'linear')")


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (a view when ``x`` is channels-last, as every map here is)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)`` in channels-last memory: a view of dense tokens, no copy.

    NOTE: spelled view + permute, not transpose + reshape: for batch 1 the latter gives a batch stride that
    makes PyTorch treat the map as NCHW, copy it, and run the depthwise convolutions 2-10x slower.
    """
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Attention(nn.Module):
    """Multi-head attention with convolutional projection (paper section 3.2).

    Queries keep the map's resolution (stride 1); keys and values are sub-sampled by ``stride_kv``.
    The cls token, if any, skips the convolutions and is prepended to q, k and v before ``proj_q/k/v``.
    Scores are scaled by ``dim ** -0.5`` over the FULL width, not the head width, as in the official code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        method: str = "dw_bn",
        kernel_size: int = 3,
        stride_q: int = 1,
        stride_kv: int = 2,
        padding_q: int = 1,
        padding_kv: int = 1,
        with_cls_token: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} heads do not divide dim {dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = dim**-0.5  # NOTE: full width, CvT's choice; SDPA's default would be head_dim ** -0.5
        self.with_cls_token = with_cls_token
        self.attn_drop = attn_drop
        q_method = "linear" if method == "avg" else method  # official: avg pools k and v only
        self.conv_proj_q = build_projection(q_method, dim, kernel_size, stride_q, padding_q)
        self.conv_proj_k = build_projection(method, dim, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = build_projection(method, dim, kernel_size, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, C) -> (B, heads, N, C/heads)
        return x.view(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, h: int, w: int, return_attn: bool = False, cls_only: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, N, C)`` -> ``(B, N, C)``; with ``return_attn`` also the ``(B, heads, Nq, Nk)`` weights.

        ``cls_only``: compute the cls token's output alone, ``(B, 1, C)`` (keys and values still see every
        token): all a classifier needs from the last block, at a tenth of its cost.
        """
        b, _, c = x.shape
        if self.with_cls_token:
            # NOTE: the slice x[:, 1:] is not a dense channels-last map; depthwise convs on such strides
            # take a slow path in oneDNN (up to 10x), so pay for one small copy instead.
            cls, x = x[:, :1], x[:, 1:].contiguous()
        elif cls_only:
            raise ValueError("cls_only needs a stage with a cls token")
        fmap = tokens_to_map(x, h, w)
        k = _to_tokens(self.conv_proj_k(fmap))  # (B, Hk*Wk, C)
        v = _to_tokens(self.conv_proj_v(fmap))
        if cls_only:
            q = cls  # the cls query never goes through the convolution
            k, v = (torch.cat((cls, t), dim=1) for t in (k, v))
        else:
            q = _to_tokens(self.conv_proj_q(fmap))  # (B, Hq*Wq, C)
            if self.with_cls_token:
                q, k, v = (torch.cat((cls, t), dim=1) for t in (q, k, v))
        q = self._heads(self.proj_q(q))
        k = self._heads(self.proj_k(k))
        v = self._heads(self.proj_v(v))
        drop = self.attn_drop if self.training else 0.0
        if return_attn:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (B, heads, Nq, Nk)
            out = F.dropout(attn, drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, -1, c)  # (B, heads, Nq, d) -> (B, Nq, C)
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attn else out


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

        self._folded: tuple[tuple, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _quick_gelu_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fc1 (weight, bias) scaled by 1.702 and fc2's weight by 1/1.702:
        ``fc2(quick_gelu(fc1 x)) = fc2'(silu(fc1' x))``."""
        key = _version_key(self.fc1.weight, self.fc1.bias, self.fc2.weight)
        if self._folded is None or self._folded[0] != key:
            a = QUICK_GELU_ALPHA
            self._folded = (key, self.fc1.weight * a, self.fc1.bias * a, self.fc2.weight / a)
        return self._folded[1], self._folded[2], self._folded[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.act, QuickGELU):
            # quick_gelu(z) = silu(a z) / a: scale fc1 by a and fc2 by 1/a (weight-sized ops, differentiable)
            # and the activation is one SiLU kernel forward and one backward, instead of three and five.
            a = QUICK_GELU_ALPHA
            if fast_path(self):
                w1, b1, w2 = self._quick_gelu_weights()
                return F.linear(F.silu(F.linear(x, w1, b1), inplace=True), w2, self.fc2.bias)
            h = F.silu(F.linear(x, self.fc1.weight * a, self.fc1.bias * a))
            return self.drop(F.linear(self.drop(h), self.fc2.weight / a, self.fc2.bias))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; stochastic depth on the residual branches only.

    ``x = x + drop_path(attn(norm1(x)))``; ``x = x + drop_path(mlp(norm2(x)))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        drop: float = 0.0,
        activation: str = "quick_gelu",
        eps: float = 1e-5,
        **attn_kwargs: object,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, proj_drop=drop, **attn_kwargs)  # type: ignore[arg-type]
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), make_activation(activation), drop)

    def forward_cls(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``x: (B, 1+HW, C)`` -> the cls token's output ``(B, 1, C)``, exactly as :meth:`forward` gives it."""
        a = self.attn(self.norm1(x), h, w, cls_only=True)
        x = x[:, :1] + self.drop_path(a)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(
        self, x: torch.Tensor, h: int, w: int, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, N, C) -> (B, N, C)`` (and the attention weights with ``return_attn``)."""
        if return_attn:
            a, attn = self.attn(self.norm1(x), h, w, return_attn=True)
        else:
            a = self.attn(self.norm1(x), h, w)
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x

"""CvT building blocks in Flax NNX: token embedding, convolutional projection attention, MLP, block.

The same modules as :mod:`cvt.torch.layers` (PyTorch) with the same attribute names, so that a parameter's path
(``stages.0.blocks.1.attn.proj_q.kernel``) is its native name up to the leaf (``kernel`` -> ``weight``,
``scale`` -> ``weight``) and the layout (:mod:`cvt.flax.weights`). Plain modules: no transforms inside, and the
contract of :mod:`cvt.torch.layers`: one call per module with one return type (attention weights through
:meth:`Attention.attention_weights`, not a flag).

Numerics follow the official model, not Flax's defaults (each of these differs by default):
LayerNorm eps 1e-5 with the two-pass variance; exact QuickGELU or erf GELU (not the tanh approximation);
the attention scale ``dim ** -0.5`` over the FULL width; symmetric integer padding (never ``"SAME"``);
``avg`` pooling in PyTorch's ceil mode; BatchNorm with PyTorch's momentum 0.1 and unbiased running variance.

Layout: NHWC maps ``(B, H, W, C)`` and ``(B, N, C)`` tokens, ``N = H*W (+1 with a cls token, first)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..core.config import (
    QUICK_GELU_ALPHA,
    check_activation,
    check_proj_method,
    conv_out,
    depthwise_taps,
    head_width,
)

Array = jax.Array


def quick_gelu(x: Array) -> Array:
    """``x * sigmoid(1.702 x)``: the activation the released CvT weights were trained with."""
    return x * jax.nn.sigmoid(QUICK_GELU_ALPHA * x)


def make_activation(name: str) -> Callable[[Array], Array]:
    """``quick_gelu`` (official) or ``gelu`` (exact erf GELU, HF's numerics)."""
    if check_activation(name) == "quick_gelu":
        return quick_gelu
    return partial(jax.nn.gelu, approximate=False)  # NOTE: Flax's default is the tanh approximation


# ---------------------------------------------------------------------------- initialisers (official)
# NOTE: torch's trunc_normal_(std=.02) truncates at +-2 ABSOLUTE, i.e. +-100 std: in effect a plain normal.
trunc_normal = nnx.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)
# PyTorch's default Conv2d / Linear weight init (kaiming-uniform, a=sqrt(5)) is uniform(+-1/sqrt(fan_in)).
torch_default_kernel = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Callable:
    """PyTorch's default bias init: uniform(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(din: int, dout: int, *, init: str = "trunc_norm", use_bias: bool = True, rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear with the official init: trunc-normal(0.02) (or xavier) weight, zero bias. Kernel ``(in, out)``."""
    kernel = nnx.initializers.xavier_uniform() if init == "xavier" else trunc_normal
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=kernel, rngs=rngs)


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # NOTE: Flax defaults to eps 1e-6 and a one-pass variance (1.7e-3 off on offset tokens).
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def drop_path(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    """Stochastic depth on ``(B, N, C)``: one draw per sample (the mask broadcasts over tokens and width)."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


# ---------------------------------------------------------------------------- normalisation
class BatchNorm(nnx.Module):
    """PyTorch's ``BatchNorm2d`` on NHWC maps: eps 1e-5, momentum 0.1 (the new batch's weight), and the running
    variance updated with the UNBIASED batch variance (``nnx.BatchNorm``: momentum 0.99 decay, biased).

    Names are PyTorch's (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``).
    Training mode normalises with the batch's biased statistics over ``(B, H, W)``; ``use_running_average``
    (set by ``model.eval()``) uses the running ones. Under ``jax.jit`` with the batch sharded over devices
    the means are over the global batch.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.momentum = momentum
        self.eps = eps
        self.use_running_average = False

    def __call__(self, x: Array) -> Array:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # two-pass, biased: what normalises the batch
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * jax.lax.stop_gradient(mean)
            self.running_var[...] = (1 - m) * self.running_var[...] + m * jax.lax.stop_gradient(unbiased)
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        scale = self.weight[...] * jax.lax.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[...]


# ---------------------------------------------------------------------------- embedding and projections
def _pad2(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((p, p), (p, p))  # NOTE: symmetric integers as PyTorch; "SAME" shifts the grid


class ConvEmbed(nnx.Module):
    """Convolutional token embedding: ``proj`` conv (with bias) then LayerNorm over channels.

    ``(B, H_in, W_in, C_in) -> (B, H, W, C)`` with ``H = floor((H_in + 2p - k) / s) + 1``.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int, eps: float, *, rngs: nnx.Rngs
    ):
        fan_in = in_chans * patch_size * patch_size
        self.proj = nnx.Conv(
            in_chans,
            embed_dim,
            (patch_size, patch_size),
            strides=stride,
            padding=_pad2(padding),
            kernel_init=torch_default_kernel,
            bias_init=torch_default_bias(fan_in),
            rngs=rngs,
        )
        self.norm = layer_norm(embed_dim, eps, rngs)

    def __call__(self, x: Array) -> Array:
        return self.norm(self.proj(x))


class DepthwiseKernel(nnx.Module):
    """A depthwise convolution's ``(k, k, 1, C)`` kernel, no bias: the parameter alone, at the path ``kernel``
    that ``nnx.Conv(feature_group_count=C)`` gives it, drawn as PyTorch's default init."""

    def __init__(self, dim: int, kernel_size: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(torch_default_kernel(rngs.params(), (kernel_size, kernel_size, 1, dim)))


class ConvProjection(nnx.Module):
    """The depthwise half of the convolutional projection: ``conv`` (depthwise, no bias) + ``bn``.

    ``(B, H, W, C) -> (B, H', W', C)``; kernel ``conv.kernel`` ``(k, k, 1, C)`` (native ``conv.weight``), applied
    by :func:`depthwise_conv`.
    """

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int, *, rngs: nnx.Rngs):
        self.conv = DepthwiseKernel(dim, kernel_size, rngs=rngs)
        self.bn = BatchNorm(dim)
        self.stride, self.padding = stride, padding

    def __call__(self, x: Array) -> Array:
        return self.bn(depthwise_conv(x, self.conv.kernel[...], self.stride, self.padding))


def depthwise_conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """``nnx.Conv(feature_group_count=C)`` with a ``(k, k, 1, C)`` kernel and symmetric ``padding``, computed as
    ``k*k`` strided slices of the padded map times one weight each, summed: ``(B, H, W, C) -> (B, H', W', C)``.

    Why: XLA's CPU backend lowers a one-channel-per-group convolution to a generic loop, 20-30x slower than a
    fused multiply-add over slices (measured on (32, 56, 56, 64): 264 ms vs 9 ms); on GPU both are fine. Same
    result up to float summation order.
    """
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = None
    for i, j, (rows, cols) in depthwise_taps(kernel.shape[0], stride):
        tap = x[:, rows, cols, :] * kernel[i, j, 0]
        out = tap if out is None else out + tap
    return out


def _ceil_counts(size: int, kernel: int, stride: int, padding: int) -> np.ndarray:
    """PyTorch's ``AvgPool2d(ceil_mode=True, count_include_pad=True)`` divisor along one axis: each window
    counts the symmetric padding but not the part that ceil mode adds beyond it."""
    out = conv_out(size, kernel, stride, padding, ceil_mode=True)
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    return (end - start).astype(np.float32)


class AvgPool(nnx.Module):
    """``AvgPool2d(k, s, p, ceil_mode=True)`` as the official ``avg`` projection: ``(B, H, W, C) -> (B, H', W', C)``.

    XLA has no ceil mode: pad the far side so the last window fits, sum, divide by PyTorch's static counts.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        _, h, w, _ = x.shape
        ch, cw = _ceil_counts(h, k, s, p), _ceil_counts(w, k, s, p)
        far_h = max(0, (len(ch) - 1) * s + k - (h + 2 * p))
        far_w = max(0, (len(cw) - 1) * s + k - (w + 2 * p))
        pads = ((0, 0), (p, p + far_h), (p, p + far_w), (0, 0))
        summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, s, s, 1), pads)
        summed = summed[:, : len(ch), : len(cw)]
        return summed / jnp.asarray(np.outer(ch, cw))[None, :, :, None]


def build_projection(method: str, dim: int, kernel_size: int, stride: int, padding: int, rngs: nnx.Rngs):
    """``dw_bn``: depthwise conv + BN; ``avg``: average pooling (ceil mode); ``linear``: ``None`` (identity)."""
    if check_proj_method(method) == "dw_bn":
        return ConvProjection(dim, kernel_size, stride, padding, rngs=rngs)
    if method == "avg":
        return AvgPool(kernel_size, stride, padding)
    return None


def _project(proj: nnx.Module | None, fmap: Array) -> Array:
    """``(B, H, W, C)`` map -> ``(B, H'*W', C)`` tokens through a projection (``None``: identity)."""
    y = fmap if proj is None else proj(fmap)
    b, h, w, c = y.shape
    return y.reshape(b, h * w, c)


# ---------------------------------------------------------------------------- attention, MLP, block
class Attention(nnx.Module):
    """Multi-head attention with convolutional projection (paper section 3.2).

    Queries keep the map's resolution (stride 1); keys and values are sub-sampled by ``stride_kv``. The cls
    token, if any, skips the convolutions and is prepended to q, k and v before ``proj_q/k/v``. Scores are
    scaled by ``dim ** -0.5`` over the FULL width (``jax.nn.dot_product_attention`` would use the head width).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
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
        init: str = "trunc_norm",
        rngs: nnx.Rngs,
    ):
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_width(dim, num_heads)
        self.scale = dim**-0.5  # NOTE: full width, CvT's choice
        self.with_cls_token = with_cls_token
        self.conv_proj_q = build_projection(q_method, dim, kernel_size, stride_q, padding_q, rngs)
        self.conv_proj_k = build_projection(kv_method, dim, kernel_size, stride_kv, padding_kv, rngs)
        self.conv_proj_v = build_projection(kv_method, dim, kernel_size, stride_kv, padding_kv, rngs)
        self.proj_q = linear(dim, dim, use_bias=qkv_bias, init=init, rngs=rngs)
        self.proj_k = linear(dim, dim, use_bias=qkv_bias, init=init, rngs=rngs)
        self.proj_v = linear(dim, dim, use_bias=qkv_bias, init=init, rngs=rngs)
        self.attn_drop = nnx.Dropout(attn_drop, rngs=rngs)
        self.proj = linear(dim, dim, init=init, rngs=rngs)
        self.proj_drop = nnx.Dropout(proj_drop, rngs=rngs)

    def _heads(self, x: Array) -> Array:
        b, n, _ = x.shape  # (B, N, C) -> (B, N, heads, C/heads): the layout dot_product_attention takes
        return x.reshape(b, n, self.num_heads, self.head_dim)

    def qkv(self, x: Array, h: int, w: int) -> tuple[Array, Array, Array]:
        """``x: (B, N, C)`` -> q ``(B, Nq, heads, C/heads)``, k and v ``(B, Nk, heads, C/heads)``."""
        b, _, c = x.shape
        cls = None
        if self.with_cls_token:
            cls, x = x[:, :1], x[:, 1:]
        fmap = x.reshape(b, h, w, c)
        q, k, v = (_project(p, fmap) for p in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v))
        if cls is not None:
            q, k, v = (jnp.concatenate((cls, t), axis=1) for t in (q, k, v))
        return self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))

    def _softmax(self, q: Array, k: Array) -> Array:
        """q ``(B, Nq, heads, d)``, k ``(B, Nk, heads, d)`` -> the weights ``(B, heads, Nq, Nk)``."""
        return jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.scale, axis=-1)

    def __call__(self, x: Array, h: int, w: int) -> Array:
        """``x: (B, N, C)`` tokens of an ``h x w`` map (cls first, if any) -> ``(B, Nq, C)``."""
        q, k, v = self.qkv(x, h, w)
        if self.attn_drop.rate > 0 and not self.attn_drop.deterministic:
            # NOTE: dot_product_attention has no dropout: write the weights out to drop some
            out = jnp.einsum("bhqk,bkhd->bqhd", self.attn_drop(self._softmax(q, k)), v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, scale=self.scale)  # (B, Nq, heads, d)
        return self.proj_drop(self.proj(out.reshape(out.shape[0], -1, self.dim)))

    def attention_weights(self, x: Array, h: int, w: int) -> Array:
        """The softmax weights :meth:`__call__` applies (no dropout): ``x: (B, N, C)`` -> ``(B, heads, Nq, Nk)``."""
        q, k, _ = self.qkv(x, h, w)
        return self._softmax(q, k)


class Mlp(nnx.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, hidden: int, activation: str, drop: float, init: str, *, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, init=init, rngs=rngs)
        self.activation = activation  # a name, not a function: static attributes must compare equal
        self.fc2 = linear(hidden, dim, init=init, rngs=rngs)
        self.drop = nnx.Dropout(drop, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.drop(self.fc2(self.drop(make_activation(self.activation)(self.fc1(x)))))


class Block(nnx.Module):
    """Pre-norm transformer block, stochastic depth on the residual branches only.

    ``x = x + drop_path(attn(norm1(x)))``; ``x = x + drop_path(mlp(norm2(x)))``. The arguments of
    :class:`cvt.torch.layers.Block` (``Block(**cvt.core.config.block_args(...), init=..., rngs=...)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        drop: float = 0.0,
        activation: str = "quick_gelu",
        eps: float = 1e-5,
        init: str = "trunc_norm",
        rngs: nnx.Rngs,
        **attn_kwargs: object,
    ):
        self.norm1 = layer_norm(dim, eps, rngs)
        self.attn = Attention(dim, num_heads, proj_drop=drop, init=init, rngs=rngs, **attn_kwargs)  # type: ignore[arg-type]
        self.drop_path = drop_path(drop_path_rate, rngs)
        self.norm2 = layer_norm(dim, eps, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation, drop, init, rngs=rngs)

    def __call__(self, x: Array, h: int, w: int) -> Array:
        """``x: (B, N, C)`` tokens of an ``h x w`` map (cls first, if any) -> ``(B, N, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))

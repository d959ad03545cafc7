"""CvT building blocks for Keras 3, written with ``keras.layers`` and ``keras.ops`` only (TF, JAX and torch backends).

Numerically the official model (and :mod:`cvt.torch.layers`): QuickGELU ``x * sigmoid(1.702 x)`` by default, attention
scaled by ``dim ** -0.5`` over the FULL width, LayerNorm/BatchNorm eps 1e-5, symmetric integer padding
(``ZeroPadding2D(p)`` + ``"valid"``; Keras' ``"same"`` pads asymmetrically and is wrong), depthwise projections
with ``DepthwiseConv2D`` weights (computed as shifted multiply-adds under XLA, see :func:`depthwise_conv`), ``avg``
projections pooled in
PyTorch's ceil mode, per-block stochastic depth, and a BatchNorm that trains as PyTorch's does (momentum 0.1 =
weight of the new batch, unbiased running variance).

Layout: maps are channels-last ``(B, H, W, C)``; tokens are ``(B, N, C)`` with ``N = H*W (+1 with a cls token,
first)``. Sub-layer names are the official ones (``patch_embed.proj``, ``attn.conv_proj_q.conv/bn``,
``attn.proj_q``, ``mlp.fc1`` ...), which is what :mod:`cvt.keras.weights` maps to the native state dict.

:class:`Block` and :class:`CvTStage` take their stage's config (a :class:`~cvt.core.config.StageConfig` as a dict):
a Keras layer's config must serialise, and that dict is the stage's. The attention's arguments come from
:func:`cvt.core.config.attention_args`, as in every front-end; the stage returns ``(tokens, map)`` as they do.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import keras
from keras import ops

from ..core.config import (
    QUICK_GELU_ALPHA,
    StageConfig,
    attention_args,
    check_activation,
    check_proj_method,
    conv_out,
    depthwise_taps,
    head_width,
)

_SKIP_INIT = contextvars.ContextVar("cvt_keras_skip_init", default=False)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build layers with zero initializers inside this block: for models whose weights are loaded right after.

    NOTE: on the JAX backend every random initializer of a new shape compiles a kernel (a cvt-tiny builds 5x
    slower with random init); the values would be overwritten anyway.
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _init(initializer: Any) -> Any:
    return "zeros" if _SKIP_INIT.get() else initializer


def quick_gelu(x: Any) -> Any:
    """``x * sigmoid(1.702 x)``: the activation the released CvT weights were trained with."""
    return x * ops.sigmoid(QUICK_GELU_ALPHA * x)


def get_activation(name: str) -> Any:
    """``"quick_gelu"`` (official) or ``"gelu"`` (exact erf GELU, HF transformers' numerics)."""
    if check_activation(name) == "quick_gelu":
        return quick_gelu
    return lambda x: ops.gelu(x, approximate=False)  # NOTE: keras.ops.gelu defaults to the tanh approximation


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default conv/linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform, a=sqrt(5))."""
    bound = 1.0 / math.sqrt(max(1, fan_in))
    return _init(keras.initializers.RandomUniform(-bound, bound))


def dense(units: int, name: str, use_bias: bool = True, init: str = "trunc_norm") -> keras.layers.Dense:
    """A Linear with the official init: trunc-normal(0.02) (or xavier) weights, zero bias."""
    kernel = _init("glorot_uniform" if init == "xavier" else keras.initializers.TruncatedNormal(stddev=0.02))
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=kernel, bias_initializer="zeros", name=name)


def layer_norm(name: str, eps: float) -> keras.layers.LayerNormalization:
    # NOTE: Keras' default epsilon is 1e-3; CvT's is 1e-5
    return keras.layers.LayerNormalization(epsilon=eps, name=name)


def drop_path(rate: float, name: str) -> keras.layers.Dropout:
    """Stochastic depth: one keep/drop draw per sample (``noise_shape`` broadcast over tokens and channels)."""
    return keras.layers.Dropout(rate, noise_shape=(None, 1, 1), name=name)


@keras.saving.register_keras_serializable(package="cvt")
class BatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis with PyTorch's semantics (``nn.BatchNorm2d`` defaults).

    Inference (and ``trainable=False``, as Keras' BatchNorm): the running statistics. Training: the batch's
    biased variance normalises; the running variance moves towards the UNBIASED one, by ``momentum`` = the weight
    of the new batch (Keras' ``BatchNormalization`` uses 0.99 = the weight of the old value, and a biased
    variance). Computes in float32 under mixed precision. Variables keep Keras' names (``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``) plus ``num_batches_tracked``.
    """

    def __init__(self, epsilon: float = 1e-5, momentum: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        c = input_shape[-1]
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=(c,), initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=(c,), initializer="ones", name="moving_variance", trainable=False)
        self.num_batches_tracked = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", name="num_batches_tracked", trainable=False
        )

    def call(self, x: Any, training: bool | None = None) -> Any:
        dtype = x.dtype
        x = ops.cast(x, "float32")
        axes = tuple(range(len(x.shape) - 1))
        if training and self.trainable:
            mean = ops.mean(x, axis=axes)
            var = ops.var(x, axis=axes)  # biased: what normalises the batch
            n = ops.cast(ops.size(x), "float32") / ops.cast(ops.shape(x)[-1], "float32")
            unbiased = var * n / ops.maximum(n - 1.0, 1.0)
            m = self.momentum
            moving_mean, moving_var = ops.cast(self.moving_mean, "float32"), ops.cast(self.moving_variance, "float32")
            self.moving_mean.assign((1.0 - m) * moving_mean + m * mean)
            self.moving_variance.assign((1.0 - m) * moving_var + m * unbiased)
            self.num_batches_tracked.assign_add(ops.cast(1, "int32"))
        else:
            mean, var = self.moving_mean, self.moving_variance
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")  # NOTE: not autocast
        mean, var = ops.cast(mean, "float32"), ops.cast(var, "float32")
        y = (x - mean) * ops.rsqrt(var + self.epsilon) * gamma + beta
        return ops.cast(y, dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


def compiling_with_xla() -> bool:
    """Whether the code being traced now will be compiled by XLA: always on the JAX backend; on TensorFlow inside
    ``tf.function(jit_compile=True)`` (what Keras' ``predict``/``fit`` use by default); never on torch."""
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    try:  # NOTE: TF has no public query for this; without it we fall back to the native depthwise op
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return False


def depthwise_conv(x: Any, kernel: Any, stride: int) -> Any:
    """Depthwise ``k x k`` convolution, "valid", of an already padded ``(B, H, W, C)`` map with a ``(k, k, C, 1)``
    kernel, as ``k*k`` strided slices times one weight each, summed: ``(B, H', W', C)``.

    Why: XLA's CPU backend lowers a grouped convolution with one channel per group to a generic loop, 20-30x
    slower than TensorFlow's native kernel (measured on (32, 56, 56, 64) at stride 1: 264 ms vs 10 ms); the
    sum of slices fuses into one pass (9 ms). Outside XLA the native op is faster, so :class:`ConvProjection`
    uses this only while :func:`compiling_with_xla`. Same result up to float summation order.
    """
    w = ops.cast(kernel, x.dtype)
    out = None
    for i, j, (rows, cols) in depthwise_taps(kernel.shape[0], stride):
        tap = x[:, rows, cols, :] * w[i, j, :, 0]
        out = tap if out is None else out + tap
    return out


def avg_pool_ceil(x: Any, kernel: int, stride: int, padding: int) -> Any:
    """``nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)`` (``count_include_pad=True``) on ``(B, H, W, C)``.

    PyTorch divides each window by its size clipped to the zero-padded input: the extra cells that ceil mode adds
    past the padding do not count. Emulated as: pad ``padding`` zeros on each side plus ``stride - 1`` extra ones
    at the far side, pool "valid", and divide by the same pooling of a map of ones over the padded input (the
    count of counted cells, as a fraction of the window). A last window that would start inside the right
    padding (possible only when ``stride > kernel - padding``) is dropped, as PyTorch does: the output size is
    :func:`cvt.core.config.conv_out`'s (on the run-time size, which may be a traced scalar).
    """
    extra = stride - 1
    pads = [[0, 0], [padding, padding + extra], [padding, padding + extra], [0, 0]]
    ones = ops.pad(ops.ones_like(x[:1, :, :, :1]), [[0, 0], [padding] * 2, [padding] * 2, [0, 0]], constant_values=1)
    counts = ops.pad(ones, [[0, 0], [0, extra], [0, extra], [0, 0]])
    pool = dict(pool_size=kernel, strides=stride, padding="valid", data_format="channels_last")
    y = ops.average_pool(ops.pad(x, pads), **pool) / ops.average_pool(counts, **pool)  # every ceil-mode window
    if stride > kernel - padding:
        out_h, out_w = (conv_out(ops.shape(x)[axis], kernel, stride, padding, ceil_mode=True) for axis in (1, 2))
        y = y[:, :out_h, :out_w, :]
    return y


@keras.saving.register_keras_serializable(package="cvt")
class ConvEmbed(keras.layers.Layer):
    """Convolutional token embedding: ``proj`` (conv with bias, symmetric padding) then LayerNorm ``norm``.

    ``(B, H_in, W_in, C_in) -> (B, H, W, C)`` with ``H = floor((H_in + 2p - k) / s) + 1``.
    """

    def __init__(
        self, embed_dim: int, patch_size: int, stride: int, padding: int, eps: float = 1e-5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.embed_dim, self.patch_size, self.stride, self.padding, self.eps = (
            embed_dim,
            patch_size,
            stride,
            padding,
            eps,
        )
        self.pad = keras.layers.ZeroPadding2D(padding, data_format="channels_last", name="pad")
        self.proj = None  # built once the input width is known (the PyTorch init depends on fan_in)
        self.norm = layer_norm("norm", eps)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        fan_in = int(input_shape[-1]) * self.patch_size**2
        self.proj = keras.layers.Conv2D(
            self.embed_dim,
            self.patch_size,
            strides=self.stride,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=torch_uniform(fan_in),
            bias_initializer=torch_uniform(fan_in),
            name="proj",
        )
        shape = self.pad.compute_output_shape(input_shape)
        self.proj.build(shape)
        self.norm.build(self.proj.compute_output_shape(shape))

    def call(self, x: Any) -> Any:
        return self.norm(self.proj(self.pad(x)))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "padding": self.padding,
            "eps": self.eps,
        }


@keras.saving.register_keras_serializable(package="cvt")
class ConvProjection(keras.layers.Layer):
    """One of q/k/v's projections before its Linear: ``dw_bn`` (depthwise ``conv`` + ``bn``), ``avg`` (pooled in
    ceil mode) or ``linear`` (identity). ``(B, H, W, C) -> (B, H', W', C)``."""

    def __init__(self, method: str, kernel_size: int, stride: int, padding: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_proj_method(method)
        self.method, self.kernel_size, self.stride, self.padding = method, kernel_size, stride, padding
        self.conv = self.bn = self.pad = None
        if method == "dw_bn":
            self.pad = keras.layers.ZeroPadding2D(padding, data_format="channels_last", name="pad")
            self.conv = keras.layers.DepthwiseConv2D(
                kernel_size,
                strides=stride,
                padding="valid",
                use_bias=False,
                data_format="channels_last",
                depthwise_initializer=torch_uniform(kernel_size**2),
                name="conv",
            )
            self.bn = BatchNorm(name="bn")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if self.method == "dw_bn":
            shape = self.pad.compute_output_shape(input_shape)
            self.conv.build(shape)
            self.bn.build(self.conv.compute_output_shape(shape))

    def call(self, x: Any, training: bool | None = None) -> Any:
        if self.method == "dw_bn":
            x = self.pad(x)
            y = depthwise_conv(x, self.conv.kernel, self.stride) if compiling_with_xla() else self.conv(x)
            return self.bn(y, training=training)
        if self.method == "avg":
            return avg_pool_ceil(x, self.kernel_size, self.stride, self.padding)
        return x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "method": self.method,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
        }


def _tokens(x: Any, channels: int) -> Any:
    """``(B, H, W, C) -> (B, H*W, C)``."""
    return ops.reshape(x, (ops.shape(x)[0], -1, channels))


@keras.saving.register_keras_serializable(package="cvt")
class Attention(keras.layers.Layer):
    """Multi-head attention with convolutional projections (paper section 3.2).

    ``call(x, h, w)``: ``x (B, N, C)`` tokens of an ``h x w`` map (cls token first when ``with_cls_token``) ->
    ``(B, N, C)``. Queries keep the map (stride 1), keys/values are sub-sampled (``stride_kv``); the cls token
    skips the convolutions and is prepended to q, k and v before ``proj_q/k/v``. Scores are scaled by
    ``dim ** -0.5`` over the FULL width (the official choice), softmax in float32.
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
        init: str = "trunc_norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.with_cls_token = dim, num_heads, with_cls_token
        self.head_dim = head_width(dim, num_heads)
        self.scale = dim**-0.5  # NOTE: full width, CvT's choice; head_dim ** -0.5 would be a silent mismatch
        self.conv_proj_q = ConvProjection(q_method, kernel_size, stride_q, padding_q, name="conv_proj_q")
        self.conv_proj_k = ConvProjection(kv_method, kernel_size, stride_kv, padding_kv, name="conv_proj_k")
        self.conv_proj_v = ConvProjection(kv_method, kernel_size, stride_kv, padding_kv, name="conv_proj_v")
        self.proj_q = dense(dim, "proj_q", qkv_bias, init)
        self.proj_k = dense(dim, "proj_k", qkv_bias, init)
        self.proj_v = dense(dim, "proj_v", qkv_bias, init)
        self.attn_drop = keras.layers.Dropout(attn_drop, name="attn_drop")
        self.proj = dense(dim, "proj", True, init)
        self.proj_drop = keras.layers.Dropout(proj_drop, name="proj_drop")
        self._config = dict(
            dim=dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            q_method=q_method,
            kv_method=kv_method,
            kernel_size=kernel_size,
            stride_q=stride_q,
            stride_kv=stride_kv,
            padding_q=padding_q,
            padding_kv=padding_kv,
            with_cls_token=with_cls_token,
            init=init,
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        map_shape = (None, None, None, self.dim)
        for name in ("q", "k", "v"):
            getattr(self, f"conv_proj_{name}").build(map_shape)
            getattr(self, f"proj_{name}").build((None, None, self.dim))
        self.proj.build((None, None, self.dim))

    def _heads(self, x: Any) -> Any:
        """``(B, N, C) -> (B, heads, N, C/heads)``."""
        x = ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def qkv(self, x: Any, h: Any, w: Any, training: bool | None = None) -> tuple[Any, Any, Any]:
        """``x: (B, N, C)`` -> q ``(B, heads, Nq, C/heads)``, k and v ``(B, heads, Nk, C/heads)``."""
        if self.with_cls_token:
            cls, x = x[:, :1], x[:, 1:]
        fmap = ops.reshape(x, (ops.shape(x)[0], h, w, self.dim))
        q, k, v = (_tokens(getattr(self, f"conv_proj_{n}")(fmap, training=training), self.dim) for n in ("q", "k", "v"))
        if self.with_cls_token:
            q, k, v = (ops.concatenate([cls, t], axis=1) for t in (q, k, v))
        return self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))

    def _softmax(self, q: Any, k: Any) -> Any:
        """q ``(B, heads, Nq, d)``, k ``(B, heads, Nk, d)`` -> the weights ``(B, heads, Nq, Nk)``, in q's dtype."""
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * ops.cast(self.scale, q.dtype)
        return ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), q.dtype)

    def call(self, x: Any, h: Any, w: Any, training: bool | None = None) -> Any:
        q, k, v = self.qkv(x, h, w, training=training)
        out = ops.matmul(self.attn_drop(self._softmax(q, k), training=training), v)  # (B, heads, Nq, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (ops.shape(out)[0], -1, self.dim))
        return self.proj_drop(self.proj(out), training=training)

    def attention_weights(self, x: Any, h: Any, w: Any) -> Any:
        """The softmax weights :meth:`call` applies (inference, no dropout): ``x (B, N, C) -> (B, heads, Nq, Nk)``."""
        q, k, _ = self.qkv(x, h, w)
        return self._softmax(q, k)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="cvt")
class Mlp(keras.layers.Layer):
    """``fc1 -> act -> drop -> fc2 -> drop``: ``(B, N, C) -> (B, N, C)``."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        activation: str = "quick_gelu",
        drop: float = 0.0,
        init: str = "trunc_norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dim, self.hidden, self.activation, self.drop_rate, self.init = dim, hidden, activation, drop, init
        self.fc1 = dense(hidden, "fc1", True, init)
        self.act = get_activation(activation)
        self.drop = keras.layers.Dropout(drop, name="drop")
        self.fc2 = dense(dim, "fc2", True, init)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.fc1.build((None, None, self.dim))
        self.fc2.build((None, None, self.hidden))

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = self.drop(self.act(self.fc1(x)), training=training)
        return self.drop(self.fc2(x), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden": self.hidden,
            "activation": self.activation,
            "drop": self.drop_rate,
            "init": self.init,
        }


@keras.saving.register_keras_serializable(package="cvt")
class Block(keras.layers.Layer):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``.

    ``call(x, h, w)``: ``(B, N, C) -> (B, N, C)``. The two drop-path calls draw independently (as the official
    single ``DropPath`` module called twice).
    """

    def __init__(
        self, stage: dict[str, Any], drop_path_rate: float, activation: str, eps: float, init: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        s = StageConfig(**stage)
        self.stage, self.drop_path_rate, self.activation, self.eps, self.init = (
            stage,
            drop_path_rate,
            activation,
            eps,
            init,
        )
        self.dim = s.embed_dim
        self.norm1 = layer_norm("norm1", eps)
        attn_args = attention_args(s)  # the core's mapping, as in every front-end
        self.attn = Attention(s.embed_dim, s.num_heads, proj_drop=s.drop_rate, init=init, name="attn", **attn_args)
        self.drop_path = drop_path(drop_path_rate, "drop_path")
        self.norm2 = layer_norm("norm2", eps)
        self.mlp = Mlp(s.embed_dim, int(s.embed_dim * s.mlp_ratio), activation, s.drop_rate, init, name="mlp")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build((None, None, self.dim))

    def call(self, x: Any, h: Any, w: Any, training: bool | None = None) -> Any:
        x = x + self.drop_path(self.attn(self.norm1(x), h=h, w=w, training=training), training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "stage": self.stage,
            "drop_path_rate": self.drop_path_rate,
            "activation": self.activation,
            "eps": self.eps,
            "init": self.init,
        }


@keras.saving.register_keras_serializable(package="cvt")
class CvTStage(keras.layers.Layer):
    """Convolutional token embedding + ``depth`` blocks (+ a cls token).

    ``(B, H_in, W_in, C_in)`` -> tokens ``(B, N, C)`` (cls first, if any) and their map ``(B, H, W, C)``: the stage
    contract of :class:`cvt.torch.model.CvTStage`, channels-last.
    """

    def __init__(self, stage: dict[str, Any], activation: str, eps: float, init: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        s = StageConfig(**stage)
        self.stage, self.activation, self.eps, self.init = stage, activation, eps, init
        self.dim, self.has_cls_token = s.embed_dim, s.cls_token
        self.patch_embed = ConvEmbed(
            s.embed_dim, s.patch_size, s.patch_stride, s.patch_padding, eps, name="patch_embed"
        )
        self.pos_drop = keras.layers.Dropout(s.drop_rate, name="pos_drop")
        self.blocks = [
            Block(stage, rate, activation, eps, init, name=f"blocks_{j}") for j, rate in enumerate(s.drop_path_rates())
        ]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.patch_embed.build(input_shape)
        self.cls_token = None
        if self.has_cls_token:
            self.cls_token = self.add_weight(
                shape=(1, 1, self.dim),
                initializer=_init(keras.initializers.TruncatedNormal(stddev=0.02)),
                name="cls_token",
            )
        for blk in self.blocks:
            blk.build((None, None, self.dim))

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = self.patch_embed(x)  # (B, H, W, C)
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        t = _tokens(x, self.dim)
        if self.has_cls_token:
            cls = ops.broadcast_to(ops.cast(self.cls_token, t.dtype), (b, 1, self.dim))
            t = ops.concatenate([cls, t], axis=1)
        t = self.pos_drop(t, training=training)
        for blk in self.blocks:
            t = blk(t, h=h, w=w, training=training)
        return t, ops.reshape(t[:, 1:] if self.has_cls_token else t, (b, h, w, self.dim))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "stage": self.stage,
            "activation": self.activation,
            "eps": self.eps,
            "init": self.init,
        }

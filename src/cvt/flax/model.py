"""The CvT model in Flax NNX, numerically equal to :class:`cvt.torch.model.CvT` (PyTorch) on the same weights.

``CvT(config, rngs=nnx.Rngs(params=0, dropout=1))`` builds the architecture of a
:class:`~cvt.core.config.CvTConfig`; the input is NHWC ``(B, H, W, in_chans)`` float, any ``H, W``.
Like every NNX module it starts in training mode (BatchNorm on batch statistics, dropout and drop path on);
``model.eval()`` / ``model.train()`` switch. :func:`cvt.flax.create_model` returns it in eval mode.

Parameter paths are the native (PyTorch) names: ``stages.{i}.patch_embed.proj``, ``stages.{i}.cls_token``,
``stages.{i}.blocks.{j}.attn.conv_proj_q.conv`` ..., ``norm``, ``head`` (:mod:`cvt.flax.weights` maps them).
The methods and the stage contract are :mod:`cvt.torch.model`'s, with NHWC maps.

**Call it through** :func:`jit_forward` (``run = jit_forward(model); logits = run(x)``): eager NNX dispatches every
operation on its own, about 14 s per cvt-13 call on a 2-core CPU against 0.55 s jitted (after a one-off compile of a
few seconds per input shape). Building from weights (:func:`cvt.flax.create_model` with ``weights=`` or
``pretrained=True``) runs no initialiser: the model is built abstractly (``nnx.eval_shape``) and filled from the file
(cvt-13: about 3-4 s against about 20 s for a random init then a fill, each in a fresh process on that CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..core.config import CvTConfig, StageConfig, block_args, feature_indices
from ..core.errors import ConfigError
from ..core.spec import PretrainedSpec
from .layers import Block, ConvEmbed, layer_norm, torch_default_bias, trunc_normal

Array = jax.Array

__all__ = ["CvT", "CvTStage", "jit_forward"]


class CvTStage(nnx.Module):
    """Convolutional token embedding + ``depth`` blocks (+ optional cls token).

    ``(B, H_in, W_in, C_in)`` -> tokens ``(B, N, C)`` (cls first, if any) and their map ``(B, H, W, C)``: the
    stage contract of :class:`cvt.torch.model.CvTStage`, channels-last.
    """

    def __init__(self, cfg: StageConfig, in_chans: int, activation: str, eps: float, init: str, *, rngs: nnx.Rngs):
        self.patch_embed = ConvEmbed(
            in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_stride, cfg.patch_padding, eps, rngs=rngs
        )
        self.pos_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)
        self.cls_token = nnx.Param(trunc_normal(rngs.params(), (1, 1, cfg.embed_dim))) if cfg.cls_token else None
        self.blocks = nnx.List(
            Block(**block_args(cfg, rate, activation, eps), init=init, rngs=rngs) for rate in cfg.drop_path_rates()
        )

    def embed(self, x: Array) -> tuple[Array, int, int]:
        """``(B, H_in, W_in, C_in)`` -> the tokens entering the blocks ``(B, N, C)`` and the map's ``H, W``."""
        x = self.patch_embed(x)  # (B, H, W, C)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, c))
            x = jnp.concatenate((cls, x), axis=1)  # (B, 1+HW, C)
        return self.pos_drop(x), h, w

    def to_map(self, x: Array, h: int, w: int) -> Array:
        """Tokens ``(B, N, C)`` -> their spatial part as a ``(B, H, W, C)`` map (no cls token)."""
        x = x[:, 1:] if self.cls_token is not None else x
        return x.reshape(x.shape[0], h, w, x.shape[-1])

    def __call__(self, x: Array) -> tuple[Array, Array]:
        x, h, w = self.embed(x)
        for blk in self.blocks:
            x = blk(x, h, w)
        return x, self.to_map(x, h, w)


class CvT(nnx.Module):
    """Convolutional vision Transformer (Flax NNX).

    ``model(x)``: ``(B, H, W, in_chans)`` -> ``(B, num_classes)`` logits (``(B, num_features)`` pooled
    features when ``num_classes == 0``).
    """

    def __init__(self, config: CvTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.pretrained_cfg: PretrainedSpec | None = None  # preprocessing, labels (set by create_model)
        eps = config.layer_norm_eps
        stages, in_chans = [], config.in_chans
        for s in config.stages:
            stages.append(CvTStage(s, in_chans, config.activation, eps, config.init, rngs=rngs))
            in_chans = s.embed_dim
        self.stages = nnx.List(stages)
        self.norm = layer_norm(self.num_features, eps, rngs)
        self.head = self._new_head(config.num_classes, rngs)

    # ------------------------------------------------------------------ derived from the config (never copies)
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_features(self) -> int:
        """Width of the last stage's tokens (what ``forward_features`` returns per token)."""
        return self.config.num_features

    @property
    def has_cls_token(self) -> bool:
        return self.config.has_cls_token

    def _new_head(self, num_classes: int, rngs: nnx.Rngs) -> nnx.Linear | None:
        """Official classifier init: trunc-normal(0.02) weight, PyTorch's default uniform bias."""
        if num_classes <= 0:
            return None
        return nnx.Linear(
            self.num_features,
            num_classes,
            kernel_init=trunc_normal,
            bias_init=torch_default_bias(self.num_features),
            rngs=rngs,
        )

    def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the head with a freshly initialised one (``0``: none, pooled features out)."""
        self.config = self.config.replace(num_classes=num_classes)
        self.head = self._new_head(num_classes, rngs)

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4 or x.shape[-1] != self.config.in_chans:
            raise ValueError(f"expected NHWC input of shape (B, H, W, {self.config.in_chans}), got {tuple(x.shape)}")
        self.config.feature_shapes(x.shape[1], x.shape[2])  # clear error for too-small inputs

    def forward_features(self, x: Array) -> Array:
        """``(B, H, W, C_in)`` -> last-stage tokens ``(B, N, C)``: the cls token first when there is one.

        An empty batch (``B == 0``) gives an empty result of the right shape (one image's shapes, none of its rows):
        reshapes with an inferred axis cannot be computed on zero elements.
        """
        self._check_input(x)
        if x.shape[0] == 0:
            return self.forward_features(jnp.zeros((1, *x.shape[1:]), x.dtype))[:0]
        for stage in self.stages:
            tokens, x = stage(x)  # (B, N_i, C_i) and its (B, H_i, W_i, C_i) map, the next stage's input
        return tokens

    def forward_head(self, x: Array, pre_logits: bool = False) -> Array:
        """``(B, N, C)`` tokens -> logits ``(B, num_classes)`` (or pooled ``(B, C)`` with ``pre_logits``).

        With a cls token: LayerNorm on it. Without: LayerNorm on every token, then the mean (official order).
        """
        x = self.norm(x[:, 0]) if self.has_cls_token else self.norm(x).mean(axis=1)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: Array) -> Array:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Array,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
    ) -> list[Array] | tuple[Array, list[Array]]:
        """timm's backbone API, as :meth:`cvt.torch.model.CvT.forward_intermediates` but with NHWC maps.

        Args:
            x: ``(B, H, W, in_chans)`` images.
            indices: the stages to return (:func:`cvt.core.config.feature_indices`: ``None`` all, an int ``n`` the
                last ``n``, a sequence those; out of range raises). Maps come in stage order.
            norm: apply the final LayerNorm to the last stage's map, when it is returned.
            stop_early: do not run the stages after the last requested one.
            output_fmt: ``"NHWC"`` (the only layout).
            intermediates_only: return the maps alone (the later stages are not run).

        Returns:
            ``(final, maps)``: ``final`` is the last run stage's tokens ``(B, N, C)`` (``forward_features(x)``
            unless stopped early; its ``[:, 0]`` is the cls token when the stage has one), or ``maps`` alone.
        """
        if output_fmt != "NHWC":
            raise ConfigError(f"output_fmt: {output_fmt!r} is not supported (use 'NHWC')")
        take = feature_indices(len(self.stages), indices)
        self._check_input(x)
        last = len(self.stages) - 1
        run = take[-1] + 1 if stop_early or intermediates_only else len(self.stages)
        maps = []
        for i in range(run):
            tokens, x = self.stages[i](x)
            if i in take:
                maps.append(self.norm(x) if norm and i == last else x)
        return maps if intermediates_only else (tokens, maps)

    def forward_attention(self, x: Array) -> list[list[Array]]:
        """Attention weights of every block: ``maps[stage][block]`` of shape ``(B, heads, N_q, N_kv)``.

        Queries index the stage's ``H*W`` map (row-major) with the cls token first when the stage has one;
        keys index the ``stride_kv``-subsampled map (cls first likewise). As in PyTorch: each block's
        :meth:`~cvt.flax.layers.Attention.attention_weights` on its normalised input, then the block itself.
        """
        self._check_input(x)
        maps: list[list[Array]] = []
        for stage in self.stages:
            tokens, h, w = stage.embed(x)
            weights = []
            for blk in stage.blocks:
                weights.append(blk.attn.attention_weights(blk.norm1(tokens), h, w))
                tokens = blk(tokens, h, w)
            maps.append(weights)
            x = stage.to_map(tokens, h, w)
        return maps


def jit_forward(model: CvT, method: str = "__call__", **options: Any) -> Callable[..., Any]:
    """``model.<method>(x, **options)`` compiled with ``jax.jit``: the model is split once into a static graph
    and its arrays, and each call merges them inside the compiled function (no NNX graph walk per call).
    ``options`` are static (e.g. ``indices=``, ``intermediates_only=`` of :meth:`CvT.forward_intermediates`).

    For inference: state changes made by the method (BatchNorm statistics in training mode) are dropped.
    Later changes to ``model`` (new weights, ``train()``) are not seen: call again.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state: nnx.State, *args: Any) -> Any:
        return getattr(nnx.merge(graphdef, state), method)(*args, **options)

    return partial(run, state)

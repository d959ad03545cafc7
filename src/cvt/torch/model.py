"""The CvT model (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021).

Paper: https://arxiv.org/abs/2103.15808 . Official code and weights: https://github.com/microsoft/CvT (MIT).
This is an independent implementation, numerically equal to the official model (QuickGELU, full-width
attention scale, LayerNorm eps 1e-5, per-stage drop-path ramp), with timm's model contract:
``forward(x)`` is exactly ``forward_head(forward_features(x))``; ``forward_intermediates`` and
``prune_intermediate_layers`` serve backbones (``create_model(..., features_only=True)``: :mod:`cvt.torch.factory`).

This is the one reference path: training, evaluation and attention maps all run it. For inference,
:meth:`CvT.fuse` returns an equivalent rewritten model (:mod:`cvt.torch.fusion`); nothing here caches anything.

State-dict names are the official ones with ``stage{i}`` spelled ``stages.{i}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from ..core.loading import FitReport

from ..core.config import CvTConfig, StageConfig, block_args, feature_indices
from ..core.errors import UsageError
from ..core.presets import default_spec
from ..core.spec import PretrainedSpec
from .fusion import fuse as fuse_model
from .layers import Block, ConvEmbed, LayerNorm, to_tokens, tokens_to_map

__all__ = ["CvT", "CvTStage", "as_spec", "check_global_pool", "count_parameters"]


class CvTStage(nn.Module):
    """Convolutional token embedding + ``depth`` blocks (+ optional cls token).

    ``(B, C_in, H_in, W_in)`` -> tokens ``(B, N, C)`` (cls first, if any) and their map ``(B, C, H, W)``: the stage
    contract of every front-end (Keras and Flax return the same pair, with channels-last maps).
    """

    def __init__(self, cfg: StageConfig, in_chans: int, activation: str, eps: float):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_stride, cfg.patch_padding, eps)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        self.blocks = nn.ModuleList(Block(**block_args(cfg, rate, activation, eps)) for rate in cfg.drop_path_rates())
        self.grad_checkpointing = False

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(B, C_in, H_in, W_in)`` -> the tokens entering the blocks ``(B, N, C)`` and the map's ``H, W``."""
        x = self.patch_embed(x)  # (B, C, H, W)
        b, _, h, w = x.shape
        x = to_tokens(x)  # (B, HW, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x), dim=1)  # (B, 1+HW, C)
        return self.pos_drop(x), h, w

    def to_map(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Tokens ``(B, N, C)`` -> their spatial part as a ``(B, C, H, W)`` channels-last view (no cls token)."""
        return tokens_to_map(x[:, 1:] if self.cls_token is not None else x, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, h, w = self.embed(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, h, w, use_reentrant=False)  # recompute in backward: less memory
            else:
                x = blk(x, h, w)
        return x, self.to_map(x, h, w)


class CvT(nn.Module):
    """Convolutional vision Transformer.

    ``forward(x)``: ``(B, in_chans, H, W)`` float, any ``H, W`` -> ``(B, num_classes)`` logits
    (``(B, num_features)`` pooled features when ``num_classes == 0``).
    """

    def __init__(self, config: CvTConfig):
        super().__init__()
        self.config = config
        self.pretrained_cfg = default_spec(config)  # preprocessing, labels (create_model: the file's)
        self.load_report: FitReport | None = None  # what loading weights found (set by create_model)
        self.fused = False  # True after cvt.fuse: an inference-only rewrite that refuses .train()
        stages, in_chans = [], config.in_chans
        for s in config.stages:
            stages.append(CvTStage(s, in_chans, config.activation, config.layer_norm_eps))
            in_chans = s.embed_dim
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNorm(config.num_features, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ derived from the config (never copies)
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_features(self) -> int:
        """Width of the last stage's tokens (what ``forward_features`` returns per token)."""
        return self.config.num_features

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features that enter the classifier (no pre-logits layer: ``num_features``)."""
        return self.config.num_features

    @property
    def has_cls_token(self) -> bool:
        return self.config.has_cls_token

    @property
    def global_pool(self) -> str:
        """timm's name for how the head pools the tokens: ``"token"`` (the cls token) or ``"avg"`` (their mean)."""
        return "token" if self.has_cls_token else "avg"

    # ------------------------------------------------------------------ the weights' spec (timm: pretrained_cfg)
    @property
    def pretrained_cfg(self) -> PretrainedSpec:
        """Preprocessing, labels, licence and source of the weights: a :class:`PretrainedSpec`, which also reads as
        timm's ``pretrained_cfg`` dict (``m.pretrained_cfg["mean"]``, ``timm.data.resolve_data_config(model=m)``).
        Assigning a timm dict stores it as a spec (:func:`as_spec`)."""
        return self._pretrained_cfg

    @pretrained_cfg.setter
    def pretrained_cfg(self, spec: PretrainedSpec | Mapping[str, Any]) -> None:
        self._pretrained_cfg = as_spec(spec)

    # timm's older name for the same dict
    default_cfg = pretrained_cfg

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's description of each stage's map: ``num_chs``, ``reduction`` (stride), ``module``."""
        pairs = zip(self.config.stages, self.config.reductions)
        return [{"num_chs": s.embed_dim, "reduction": r, "module": f"stages.{i}"} for i, (s, r) in enumerate(pairs)]

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation: Linear trunc-normal(0.02) (or xavier) with zero bias, norms 1/0,
        cls token trunc-normal(0.02); convolutions keep PyTorch's default (kaiming-uniform); the
        classifier weight is trunc-normal(0.02) and its bias keeps PyTorch's default uniform init."""
        for stage in self.stages:
            for m in stage.modules():
                if isinstance(m, nn.Linear):
                    if self.config.init == "xavier":
                        nn.init.xavier_uniform_(m.weight)
                    else:
                        nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise UsageError(f"expected input of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        if not torch.compiler.is_compiling():  # symbolic shapes under export: leave the checks to the ops
            try:
                self.config.feature_shapes(x.shape[-2], x.shape[-1])  # a clear error for too-small inputs
            except ValueError as e:
                raise UsageError(str(e)) from None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> last-stage tokens ``(B, N, C)``: the cls token first when there is one."""
        self._check_input(x)
        for stage in self.stages:
            tokens, x = stage(x)  # (B, N_i, C_i) and its (B, C_i, H_i, W_i) map, the next stage's input
        return tokens

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, N, C)`` tokens -> logits ``(B, num_classes)`` (or pooled ``(B, C)`` with ``pre_logits``).

        With a cls token: LayerNorm on it. Without: LayerNorm on every token, then the mean (official order).
        """
        x = self.norm(x[:, 0]) if self.has_cls_token else self.norm(x).mean(dim=1)
        if self.config.head_drop_rate:  # timm's drop_rate (as timm, on pre_logits too); the official model has none
            x = F.dropout(x, self.config.head_drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's backbone API: per-stage ``(B, C_i, H_i, W_i)`` maps (strides 4/8/16 for the released models).

        Args:
            x: ``(B, in_chans, H, W)`` images.
            indices: the stages to return (:func:`feature_indices`: ``None`` all, an int ``n`` the last ``n``,
                a sequence those; out of range raises). Maps come in stage order.
            norm: apply the final LayerNorm (over channels) to the last stage's map, when it is returned.
            stop_early: do not run the stages after the last requested one.
            output_fmt: ``"NCHW"`` (the only layout).
            intermediates_only: return the maps alone (the later stages are not run).

        Returns:
            ``(final, maps)``: ``final`` is the last run stage's tokens (``forward_features(x)`` unless
            stopped early; its ``[:, 0]`` is the cls token when the stage has one), or ``maps`` alone.
        """
        if output_fmt != "NCHW":
            raise UsageError(f"output_fmt: {output_fmt!r} is not supported (use 'NCHW')")
        take = feature_indices(len(self.stages), indices)
        self._check_input(x)
        last = len(self.stages) - 1
        stages = self.stages[: take[-1] + 1] if stop_early or intermediates_only else self.stages
        maps = []
        for i, stage in enumerate(stages):
            tokens, x = stage(x)
            if i in take:
                maps.append(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if norm and i == last else x)
        return maps if intermediates_only else (tokens, maps)

    @torch.no_grad()
    def forward_attention(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Attention weights of every block: ``maps[stage][block]`` of shape ``(B, heads, N_q, N_kv)``.

        Queries index the stage's ``H*W`` map (row-major) with the cls token first when the stage has one;
        keys index the ``stride_kv``-subsampled map (cls first likewise). Needs the reference model (or
        ``fuse(cls_only=False)``).
        """
        self._check_input(x)
        maps: list[list[torch.Tensor]] = []
        for stage in self.stages:
            tokens, h, w = stage.embed(x)
            weights = []
            for blk in stage.blocks:
                weights.append(blk.attn.attention_weights(blk.norm1(tokens), h, w))
                tokens = blk(tokens, h, w)
            maps.append(weights)
            x = stage.to_map(tokens, h, w)
        return maps

    # ------------------------------------------------------------------ timm's model API
    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove what ``forward_intermediates(indices=...)`` does not need; return the kept stage indices.

        Stages after the last requested one go (the config follows: ``num_features`` becomes the last kept
        stage's width); ``prune_head`` removes the classifier, ``prune_norm`` the final LayerNorm. The final
        norm and head belong to the last stage, so removing stages needs ``prune_head`` and removes the norm.
        """
        take = feature_indices(len(self.stages), indices)
        keep = take[-1] + 1
        if keep < len(self.stages):
            if not prune_head:
                raise UsageError(f"indices: {indices!r} removes stages that feed the head; use prune_head=True")
            self.stages = self.stages[:keep]
            self.config = self.config.replace(stages=self.config.stages[:keep])
            prune_norm = True
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (the cls token; norms and biases by rule)."""
        return {f"stages.{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth for layer-wise LR decay, in timm's regex format (first match wins).

        ``stem``: the first embedding; ``blocks``: per stage (``coarse``) or per block, each stage's embedding
        and cls token with its first block and the final norm with the last block. The head matches nothing:
        timm puts it last.
        """
        last = (r"^norm", (99999,))  # timm's MATCH_PREV_GROUP
        if coarse:
            return {"stem": r"^stages\.0\.patch_embed", "blocks": [(r"^stages\.(\d+)", None), last]}
        blocks = [(r"^stages\.(\d+)\.(?:patch_embed|cls_token)", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), last]
        return {"stem": r"^stages\.0\.patch_embed", "blocks": blocks}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory in training, same results."""
        for s in self.stages:
            s.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one (``0`` -> identity: pooled features out).

        ``global_pool``: timm's argument; ``None`` or the model's own pooling (:attr:`global_pool`), the only one
        it has (:func:`check_global_pool`).
        """
        check_global_pool(self.config, global_pool)
        self.config = self.config.replace(num_classes=num_classes)
        ref = next(self.parameters())
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            bound = 1 / math.sqrt(self.num_features)
            nn.init.uniform_(self.head.bias, -bound, bound)
        else:
            self.head = nn.Identity()

    def fuse(self, cls_only: bool = True, inplace: bool = False) -> CvT:
        """An equivalent inference-only model with rewritten modules: :func:`cvt.fuse`."""
        return fuse_model(self, cls_only=cls_only, inplace=inplace)

    def train(self, mode: bool = True) -> CvT:
        if mode and self.fused:
            raise UsageError("this model is fused for inference (cvt.fuse) and cannot train: train the unfused model")
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, activation={self.config.activation!r}" + (", fused" if self.fused else "")


def as_spec(spec: PretrainedSpec | Mapping[str, Any]) -> PretrainedSpec:
    """A model's ``pretrained_cfg`` as a :class:`PretrainedSpec`: a spec as is, a timm ``pretrained_cfg`` dict read
    by :meth:`PretrainedSpec.from_timm` (so timm-style code that assigns one keeps our code working)."""
    if isinstance(spec, PretrainedSpec):
        return spec
    if isinstance(spec, Mapping):
        return PretrainedSpec.from_timm(spec)
    raise UsageError(
        f"pretrained_cfg: expected a PretrainedSpec or a timm pretrained_cfg dict, got {type(spec).__name__}"
    )


def check_global_pool(config: CvTConfig, global_pool: str | None) -> None:
    """Refuse (one :class:`UsageError` line) a timm ``global_pool`` other than the model's own.

    A CvT pools the way its weights were trained: by the last stage's cls token (``"token"``) when it has one, else
    by the mean of the normed tokens (``"avg"``). ``None`` (timm: keep the current pooling) is always accepted.
    """
    own = "token" if config.has_cls_token else "avg"
    if global_pool is not None and global_pool != own:
        how = "its cls token" if own == "token" else "the mean of its tokens"
        raise UsageError(
            f"global_pool: {global_pool!r} is not supported; {config.name} pools by {how} ({own!r}, or None)"
        )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """The parameters of a built module (only those that train, by default). For a :class:`CvTConfig` without
    building the model: :func:`cvt.count_params` (``cvt.core.macs``); the two agree on every CvT."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

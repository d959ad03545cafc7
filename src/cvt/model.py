"""The CvT model (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021).

Paper: https://arxiv.org/abs/2103.15808 . Official code and weights: https://github.com/microsoft/CvT (MIT).
This is an independent implementation, numerically equal to the official model (QuickGELU, full-width
attention scale, LayerNorm eps 1e-5, per-stage drop-path ramp), with a timm-style model API.

State-dict names are the official ones with ``stage{i}`` spelled ``stages.{i}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from .weights.io import LoadReport

from .core.config import CvTConfig, StageConfig
from .core.spec import PretrainedSpec
from .layers import Block, ConvEmbed, LayerNorm, tokens_to_map

__all__ = ["CvT", "CvTStage", "count_parameters"]


class CvTStage(nn.Module):
    """Convolutional token embedding + ``depth`` blocks (+ optional cls token).

    ``(B, C_in, H_in, W_in) -> (B, C, H, W)`` map and the ``(B, 1, C)`` cls token (or ``None``).
    """

    def __init__(self, cfg: StageConfig, in_chans: int, activation: str, eps: float):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_stride, cfg.patch_padding, eps)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                drop_path=rate,
                drop=cfg.drop_rate,
                activation=activation,
                eps=eps,
                qkv_bias=cfg.qkv_bias,
                attn_drop=cfg.attn_drop_rate,
                method=cfg.qkv_proj_method,
                kernel_size=cfg.kernel_qkv,
                stride_q=cfg.stride_q,
                stride_kv=cfg.stride_kv,
                padding_q=cfg.padding_q,
                padding_kv=cfg.padding_kv,
                with_cls_token=cfg.cls_token,
            )
            for rate in cfg.drop_path_rates()
        )
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, attn_maps: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.patch_embed(x)  # (B, C, H, W)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x), dim=1)  # (B, 1+HW, C)
        x = self.pos_drop(x)
        for blk in self.blocks:
            if attn_maps is not None:
                x, attn = blk(x, h, w, return_attn=True)
                attn_maps.append(attn)
            elif self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, h, w, use_reentrant=False)
            else:
                x = blk(x, h, w)
        cls = None
        if self.cls_token is not None:
            cls, x = x[:, :1], x[:, 1:]
        return tokens_to_map(x, h, w), cls  # (B, HW, C) -> (B, C, H, W), channels-last

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Only the cls token after the stage, ``(B, 1, C)``: the last block computes the cls row alone."""
        if self.cls_token is None:
            raise ValueError("forward_cls needs a stage with a cls token")
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x.flatten(2).transpose(1, 2)), dim=1)
        x = self.pos_drop(x)
        for blk in self.blocks[:-1]:
            x = blk(x, h, w)
        return self.blocks[-1].forward_cls(x, h, w)


class CvT(nn.Module):
    """Convolutional vision Transformer.

    ``forward(x)``: ``(B, in_chans, H, W)`` float, any ``H, W`` -> ``(B, num_classes)`` logits
    (``(B, num_features)`` pooled features when ``num_classes == 0``).
    """

    def __init__(self, config: CvTConfig):
        super().__init__()
        self.config = config
        self.pretrained_cfg: PretrainedSpec | None = None  # preprocessing, labels, licence (set by create_model)
        self.load_report: LoadReport | None = None  # what loading weights found (set by create_model)
        self.num_classes = config.num_classes
        self.num_features = config.num_features
        eps = config.layer_norm_eps
        stages, in_chans = [], config.in_chans
        for s in config.stages:
            stages.append(CvTStage(s, in_chans, config.activation, eps))
            in_chans = s.embed_dim
        self.stages = nn.ModuleList(stages)
        self.has_cls_token = config.stages[-1].cls_token
        self.norm = LayerNorm(self.num_features, eps=eps)
        self.head = nn.Linear(self.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        # timm's contract: what each stage's map is, for backbones / features_only users
        self.feature_info = [
            {"num_chs": s.embed_dim, "reduction": r, "module": f"stages.{i}"}
            for i, (s, r) in enumerate(zip(config.stages, config.reductions))
        ]
        self.init_weights()

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

    # ------------------------------------------------------------------ timm-style API
    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (the cls token; norms and biases by rule)."""
        return {f"stages.{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory in training, same results."""
        for s in self.stages:
            s.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one (``0`` -> identity: pooled features out)."""
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = self.norm.weight
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            bound = 1 / math.sqrt(self.num_features)
            nn.init.uniform_(self.head.bias, -bound, bound)
        else:
            self.head = nn.Identity()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected input of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        if not torch.compiler.is_compiling():  # symbolic shapes under export: leave the checks to the ops
            self.config.feature_shapes(x.shape[-2], x.shape[-1])  # clear error for too-small inputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> last-stage tokens ``(B, N, C)``: the cls token first when there is one."""
        self._check_input(x)
        cls = None
        for stage in self.stages:
            x, cls = stage(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return torch.cat((cls, tokens), dim=1) if cls is not None else tokens

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, N, C)`` tokens -> logits ``(B, num_classes)`` (or pooled ``(B, C)`` with ``pre_logits``).

        With a cls token: LayerNorm on it. Without: LayerNorm on every token, then the mean (official order).
        """
        x = self.norm(x[:, 0]) if self.has_cls_token else self.norm(x).mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_cls_token and not self.training:
            # Logits read the cls token only; the last block's other outputs would be thrown away, so
            # compute its cls row alone (exact; about 7% of cvt-13's MACs saved). Training keeps the full
            # path so that every parameter gets a gradient (DDP and optimizers expect one).
            self._check_input(x)
            for stage in self.stages[:-1]:
                x, _ = stage(x)
            return self.head(self.norm(self.stages[-1].forward_cls(x)[:, 0]))
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, return_cls: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-stage NCHW feature maps (strides 4/8/16 for the released models): a dense-prediction backbone.

        Args:
            x: ``(B, 3, H, W)`` images.
            indices: which stages to return (``None``: all; an int ``n``: the last ``n``; a list: those).
                Stages after the last requested one are not run.
            return_cls: also return the last run stage's ``(B, 1, C)`` cls token (``None`` if it has none).

        Returns:
            A list of ``(B, C_i, H_i, W_i)`` maps (and the cls token with ``return_cls``).
        """
        self._check_input(x)
        n = len(self.stages)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i % n for i in indices]
        if not take or any(i < 0 or i >= n for i in take):
            raise ValueError(f"indices: {indices!r} does not select stages of a {n}-stage model")
        feats, cls = [], None
        for i, stage in enumerate(self.stages[: max(take) + 1]):
            x, cls = stage(x)
            if i in take:
                feats.append(x)
        return (feats, cls) if return_cls else feats

    @torch.no_grad()
    def forward_attention(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Attention weights of every block: ``maps[stage][block]`` of shape ``(B, heads, N_q, N_kv)``.

        Queries index the stage's ``H*W`` map (row-major) with the cls token first when the stage has one;
        keys index the ``stride_kv``-subsampled map (cls first likewise). Uses the explicit softmax path.
        """
        self._check_input(x)
        maps: list[list[torch.Tensor]] = []
        for stage in self.stages:
            stage_maps: list[torch.Tensor] = []
            x, _ = stage(x, attn_maps=stage_maps)
            maps.append(stage_maps)
        return maps

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, activation={self.config.activation!r}"


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

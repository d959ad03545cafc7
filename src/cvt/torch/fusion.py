"""Inference rewrites of a CvT, applied once and explicitly: ``fused = fuse(model)`` (or ``model.fuse()``).

The pattern of timm's ``reparameterize_model`` and LeViT's ``fuse()``: modules are replaced by cheaper
equivalents, computed once from the current weights; nothing is cached and nothing is recomputed later.

* **BatchNorm folded into the depthwise convolutions**: every ``dw_bn`` projection (depthwise conv + BN)
  becomes one depthwise conv with a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). ``avg`` and ``linear``
  projections have nothing to fold and stay as they are.
* **QuickGELU MLPs as one SiLU**: ``quick_gelu(z) = silu(1.702 z) / 1.702``, so ``fc1`` is scaled by 1.702 and
  ``fc2``'s weight by 1/1.702; the activation is then one SiLU kernel. GELU MLPs stay as they are.
* **cls-only last block** (``cls_only=True``, only when the last stage has a cls token): the last block
  computes the cls token's row alone (its keys and values still see every token, so the result is exact);
  a classifier reads nothing else. About 7% of cvt-13's MACs.

The fused model's logits equal the reference's within float rounding (1e-5, ``tests/test_fuse.py``).

Contract:

* ``fuse`` returns a fused deep copy and leaves ``model`` untouched; ``inplace=True`` rewrites ``model`` itself
  (no second copy of the weights) and returns it.
* A fused model is for inference only: it is put in eval mode and ``.train()`` raises a
  :class:`~cvt.core.errors.UsageError` (``.eval()`` works). Train, fine-tune or save the unfused model.
* Its state dict is not a checkpoint: keys and values differ from the official layout (folded convs, scaled
  ``fc1``/``fc2``). Save the unfused model's weights.
* With ``cls_only``, ``forward_features`` returns only the cls token, ``(B, 1, C)``, and the last stage gives no
  map: ``forward_intermediates``, ``forward_attention`` (:mod:`cvt.explain`) and ``features_only`` users fuse
  with ``cls_only=False``, which keeps every token.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..core.errors import UsageError
from .layers import (
    QUICK_GELU_ALPHA,
    Block,
    ConvProjection,
    Mlp,
    QuickGELU,
    merge_heads,
    split_heads,
    to_tokens,
    tokens_to_map,
)

if TYPE_CHECKING:
    from .model import CvT

__all__ = ["ClsOnlyBlock", "ClsOnlyStage", "SiLUMlp", "fold_conv_bn", "fuse"]


def fuse(model: CvT, cls_only: bool = True, inplace: bool = False) -> CvT:
    """A fused, inference-only equivalent of ``model`` (see the module docstring); a copy unless ``inplace``.

    ``model`` must be a reference (unfused) :class:`~cvt.torch.model.CvT`; it may be in any mode (BatchNorm folds its
    running statistics, as eval mode uses them).
    """
    if model.fused:
        raise UsageError("fuse: the model is already fused")
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ConvProjection) and child.bn.track_running_stats:
                setattr(module, name, fold_conv_bn(child))
            elif isinstance(child, Mlp) and isinstance(child.act, QuickGELU):
                setattr(module, name, SiLUMlp(child))
    if cls_only and model.has_cls_token:
        model.stages[-1] = ClsOnlyStage(model.stages[-1])
    model.fused = True
    return model.eval()


def fold_conv_bn(proj: ConvProjection) -> nn.Conv2d:
    """``bn(conv(x))`` in eval mode as one depthwise conv with a bias: ``(B, C, H, W) -> (B, C, H', W')``."""
    return fuse_conv_bn_eval(proj.conv.eval(), proj.bn.eval())  # eval: BN's running statistics


class SiLUMlp(nn.Module):
    """``fc2(silu(fc1 x))`` with ``fc1`` scaled by 1.702 and ``fc2.weight`` by 1/1.702: a QuickGELU :class:`Mlp`.

    ``(B, N, C) -> (B, N, C)``; no dropout (inference only).
    """

    def __init__(self, mlp: Mlp):
        super().__init__()
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2  # takes them over: fuse() works on its own copy (or inplace)
        with torch.no_grad():
            self.fc1.weight.mul_(QUICK_GELU_ALPHA)
            self.fc1.bias.mul_(QUICK_GELU_ALPHA)
            self.fc2.weight.div_(QUICK_GELU_ALPHA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x), inplace=True))


class ClsOnlyBlock(nn.Module):
    """A last :class:`~cvt.torch.layers.Block` that computes the cls token's row alone: ``(B, 1+HW, C) -> (B, 1, C)``.

    Exact: the cls query attends to the cls token and the whole projected key/value map, as in the full block.
    """

    def __init__(self, block: Block):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        attn = self.attn
        y = self.norm1(x)
        cls, fmap = y[:, :1], tokens_to_map(y[:, 1:].contiguous(), h, w)  # NOTE: contiguous, see Attention.qkv
        k = torch.cat((cls, to_tokens(attn.conv_proj_k(fmap))), dim=1)  # (B, 1+Hk*Wk, C)
        v = torch.cat((cls, to_tokens(attn.conv_proj_v(fmap))), dim=1)
        n = attn.num_heads
        q, k, v = split_heads(attn.proj_q(cls), n), split_heads(attn.proj_k(k), n), split_heads(attn.proj_v(v), n)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, heads, 1, C/heads)
        x = x[:, :1] + attn.proj(merge_heads(out))  # (B, 1, C)
        return x + self.mlp(self.norm2(x))


class ClsOnlyStage(nn.Module):
    """A last :class:`~cvt.torch.model.CvTStage` whose last block is a :class:`ClsOnlyBlock`.

    ``(B, C_in, H_in, W_in)`` -> the cls token ``(B, 1, C)`` and ``None``: no map (no spatial token is computed).
    """

    def __init__(self, stage: nn.Module):
        super().__init__()
        stage.blocks[-1] = ClsOnlyBlock(stage.blocks[-1])
        self.stage = stage

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, h, w = self.stage.embed(x)  # (B, 1+HW, C)
        for blk in self.stage.blocks:
            x = blk(x, h, w)  # the last one: (B, 1, C)
        return x, None

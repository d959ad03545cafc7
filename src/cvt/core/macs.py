"""Analytic cost of a CvT: parameters and multiply-accumulates (MACs), attention matmuls included.

Generic counters (ptflops, fvcore hooks) miss the ``q @ k^T`` and ``attn @ v`` products, which are ~0.5 G of CvT-13's
4.57 GMACs at 224 (microsoft/CvT issues #1 and #8). Counted here: every convolution, every Linear, both attention
matmuls. Not counted (as in the paper): norms, activations, softmax, pooling, adds. Framework-free: the counts come
from the config alone (tests check them against torch's ``FlopCounterMode``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CvTConfig, StageConfig, conv_out


@dataclass(frozen=True)
class StageCost:
    index: int
    map_hw: tuple[int, int]  # query map (H, W)
    kv_hw: tuple[int, int]  # key/value map (H', W')
    tokens_q: int  # incl. cls
    tokens_kv: int
    embed_macs: int
    attn_proj_macs: int  # depthwise convs + q/k/v/out Linear layers
    attn_matmul_macs: int  # q @ k^T and attn @ v
    mlp_macs: int

    @property
    def macs(self) -> int:
        return self.embed_macs + self.attn_proj_macs + self.attn_matmul_macs + self.mlp_macs


def stage_costs(config: CvTConfig, height: int, width: int) -> list[StageCost]:
    """Per-stage MACs for one ``height x width`` image."""
    out = []
    c_in, h, w = config.in_chans, height, width
    for i, s in enumerate(config.stages):
        c = s.embed_dim
        h = conv_out(h, s.patch_size, s.patch_stride, s.patch_padding)
        w = conv_out(w, s.patch_size, s.patch_stride, s.patch_padding)
        embed = h * w * c * c_in * s.patch_size**2
        cls = 1 if s.cls_token else 0

        (hq, wq), q_conv = _projection(s, h, w, "q")
        (hk, wk), kv_conv = _projection(s, h, w, "kv")
        nq, nk = hq * wq + cls, hk * wk + cls
        n = h * w + cls  # tokens through the block (out proj, MLP)
        attn_proj = q_conv + 2 * kv_conv + nq * c * c + 2 * nk * c * c + nq * c * c
        matmul = 2 * nq * nk * c  # summed over heads: heads * (nq * nk * head_dim) each
        hidden = int(c * s.mlp_ratio)
        mlp = 2 * n * c * hidden
        out.append(StageCost(i, (h, w), (hk, wk), nq, nk, embed, attn_proj * s.depth, matmul * s.depth, mlp * s.depth))
        c_in = c
    return out


def _projection(s: StageConfig, h: int, w: int, kind: str) -> tuple[tuple[int, int], int]:
    """``((H', W'), MACs of the depthwise conv)`` of one q (``kind="q"``) or k/v projection of an h x w map."""
    hw = s.projected_shape(h, w, kind)
    method = s.q_method if kind == "q" else s.qkv_proj_method
    return hw, (hw[0] * hw[1] * s.embed_dim * s.kernel_qkv**2 if method == "dw_bn" else 0)


def count_macs(config: CvTConfig, height: int | None = None, width: int | None = None) -> int:
    """Total MACs for one image (default: the config's ``img_size`` square), head included."""
    height = height or config.img_size
    width = width or height
    head = config.num_features * config.num_classes
    return sum(s.macs for s in stage_costs(config, height, width)) + head


def count_params(config: CvTConfig) -> int:
    """Trainable parameters (BatchNorm running statistics excluded), computed from the config alone.

    For a built module (any ``nn.Module``): :func:`cvt.count_parameters`; the two agree on every CvT.
    """
    total, c_in = 0, config.in_chans
    for s in config.stages:
        c = s.embed_dim
        total += c * c_in * s.patch_size**2 + c + 2 * c  # embed conv (+bias) + LayerNorm
        if s.cls_token:
            total += c
        per_block = 4 * c  # norm1, norm2
        dw = c * s.kernel_qkv**2 + 2 * c  # depthwise conv + BN affine
        if s.qkv_proj_method == "dw_bn":
            per_block += 3 * dw
        per_block += 3 * (c * c + (c if s.qkv_bias else 0)) + c * c + c  # proj_q/k/v + proj
        hidden = int(c * s.mlp_ratio)
        per_block += c * hidden + hidden + hidden * c + c
        total += per_block * s.depth
        c_in = c
    total += 2 * config.num_features  # final norm
    if config.num_classes:
        total += config.num_features * config.num_classes + config.num_classes
    return total

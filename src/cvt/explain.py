"""Attention heat maps: what the cls token looks at, drawn with PIL only (no matplotlib).

Method: **last-layer cls attention, averaged over heads.** In the last block of the last stage, the row of
the attention matrix whose query is the cls token, without its weight on itself, renormalised to sum to 1,
averaged over heads. Its keys are the ``stride_kv``-subsampled token map (7x7 for a 224 input, 12x12 for
384, each cell covering 32x32 input pixels); the map is upsampled bilinearly to the input crop.

Attention rollout is not used: CvT's keys and values are subsampled (``N_kv < N_q``), so the per-layer
matrices are not square and do not compose without an extra resampling step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .core.errors import UsageError
from .torch.fusion import ClsOnlyStage
from .torch.model import CvT

MIN_PANEL = 224  # display size of each image panel, at least

# Five stops of matplotlib's "inferno" (black -> purple -> red -> orange -> pale yellow), interpolated.
_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def kv_grid(model: CvT, height: int, width: int) -> tuple[int, int]:
    """``(H_kv, W_kv)`` of the last stage's key map for a ``height x width`` input."""
    _, h, w = model.config.feature_shapes(height, width)[-1]
    return model.config.stages[-1].kv_shape(h, w)


@torch.no_grad()
def cls_attention(model: CvT, x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` input -> ``(B, H_kv, W_kv)`` cls-token attention of the last block (sums to 1)."""
    if not model.has_cls_token:
        raise UsageError("attention maps need a cls token in the last stage (every released CvT has one)")
    if isinstance(model.stages[-1], ClsOnlyStage):
        raise UsageError("attention maps need every token: use the unfused model or fuse(model, cls_only=False)")
    attn = model.forward_attention(x)[-1][-1]  # (B, heads, 1 + N_q, 1 + N_kv), cls first
    cls = attn[:, :, 0, 1:].float().mean(dim=1)  # (B, N_kv)
    cls = cls / cls.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    hk, wk = kv_grid(model, x.shape[-2], x.shape[-1])
    return cls.reshape(x.shape[0], hk, wk)


def colorize(heat: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours (inferno-like ramp)."""
    t = np.clip(heat, 0.0, 1.0) * (len(_STOPS) - 1)
    i = np.minimum(t.astype(np.int64), len(_STOPS) - 2)
    f = (t - i)[..., None]
    return np.rint(_STOPS[i] * (1 - f) + _STOPS[i + 1] * f).astype(np.uint8)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.55) -> Image.Image:
    """Blend the ``(H_kv, W_kv)`` map, min-max scaled and upsampled bilinearly, over ``image`` (RGB)."""
    h = heat.detach().float().cpu().numpy()
    h = (h - h.min()) / max(float(h.max() - h.min()), 1e-12)
    small = Image.fromarray((h * 255).astype(np.uint8), "L").resize(image.size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colorize(np.asarray(small, dtype=np.float64) / 255.0), "RGB")
    return Image.blend(image.convert("RGB"), colours, alpha)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(
    image: Image.Image, heat: torch.Tensor, labels: Sequence[str], probs: Sequence[float], title: str = ""
) -> Image.Image:
    """One PNG-ready panel: the model's input crop, the heat map over it, and the top-k with bars below.

    ``image``: the ``S x S`` crop the model saw; ``heat``: ``(H_kv, W_kv)``; ``labels``/``probs``: top-k.
    """
    size = max(image.size[0], MIN_PANEL)  # small inputs are enlarged for display
    image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) if size != image.size[0] else image
    pad, row, font = 8, 20, _font(13)
    width = 2 * size + 3 * pad
    height = pad + 18 + size + pad + row * len(labels) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    chars = max(8, (width - 2 * pad) // 7)
    draw.text((pad, pad), title if len(title) <= chars else "..." + title[-(chars - 3) :], fill=(0, 0, 0), font=font)
    top = pad + 18
    canvas.paste(image.convert("RGB"), (pad, top))
    canvas.paste(overlay(image, heat), (2 * pad + size, top))
    y = top + size + pad
    bar_max = width - 2 * pad
    for label, p in zip(labels, probs):
        draw.rectangle((pad, y + 2, pad + max(1, round(bar_max * float(p))), y + row - 3), fill=(255, 196, 120))
        draw.text((pad + 4, y + 3), f"{100 * float(p):5.1f}%  {label}"[:80], fill=(0, 0, 0), font=font)
        y += row
    return canvas

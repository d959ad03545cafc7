"""Optimizer construction and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.optim import decays


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the rest with ``weight_decay=0``.

    Which is which is the core's rule (:func:`cvt.core.optim.decays`: no decay on biases, norm parameters and
    the cls token; depthwise convolution weights ARE decayed), plus the names in ``model.no_weight_decay()``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if decays(name, param.ndim, skip) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    *,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``"adamw"`` (``betas``, ``eps``) or ``"sgd"`` (``momentum``, ``nesterov``) over :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"optim.name: {name!r} is not one of adamw, sgd")


def lr_at(
    step: int, *, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float = 0.0, min_lr: float = 0.0
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``.

    ``lr(0) = warmup_lr``, ``lr(warmup_steps) = base_lr``, ``lr(total_steps) = min_lr``; per step, not per
    epoch (the official code steps timm's scheduler per epoch; per step is smoother and the same curve).
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

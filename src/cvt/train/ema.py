"""Exponential moving average of the model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay * ema + (1 - decay) * model`` after each optimizer step; buffers (BN statistics) copied.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates (as in
    TensorFlow's ExponentialMovingAverage), so short runs are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if average.dtype.is_floating_point:
                average.lerp_(current.detach(), 1.0 - decay)
            else:
                average.copy_(current)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

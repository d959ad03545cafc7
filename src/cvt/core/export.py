"""The rule every export follows for its tolerance (PyTorch's ONNX / TorchScript / ExportedProgram, Keras' SavedModel
/ LiteRT): an exported file is published only when its outputs are within ``atol`` of eager. Framework-free."""

from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

DEFAULT_ATOL = 1e-4  # largest accepted absolute difference between an exported file's outputs and eager's


def check_atol(atol: Any, name: str = "atol") -> float:
    """``atol`` as a float, or :class:`UsageError`: it must be a finite number >= 0 (0 asks for equality; an
    infinite or NaN tolerance would accept any output, a negative one none)."""
    try:
        value = float(atol)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: expected a number, got {atol!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{name}: must be a finite number >= 0, got {atol}")
    return value

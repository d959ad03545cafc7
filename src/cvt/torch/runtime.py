"""Where PyTorch work runs: the one device rule of every verb and of :class:`~cvt.predict.Predictor`."""

from __future__ import annotations

import torch

from ..core.errors import UsageError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; a named device must exist here.

    Raises :class:`~cvt.core.errors.UsageError` (one line) for a CUDA device on a machine without CUDA or an
    index past the last GPU, instead of a traceback from deep inside torch.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"device {device!r}: not a device name ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev

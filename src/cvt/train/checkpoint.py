"""Training checkpoints that lose nothing, written atomically, readable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain python values only (no classes, no numpy arrays)::

    {"format": "cvt-torch-train", "version": 1,
     "model": state dict, "optimizer": state dict, "scaler": state dict, "ema": {...} | None,
     "state": {"epoch", "step", "step_in_epoch", "best", "best_epoch", "history", ...},   # JSON-like
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": [...], "python": [...]},
     "config": TrainConfig as a dict, "model_config": CvTConfig as a dict, "classes": [...]}
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CvtError, first_line
from ..core.files import atomic_write

FORMAT = "cvt-torch-train"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(CvtError, ValueError):
    """A training checkpoint that cannot be used (one line, names the file)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path``: temporary file, fsync, rename."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same one-line message
        raise CheckpointError(f"{path}: not a readable training checkpoint ({first_line(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cvt-torch training checkpoint")
    if ck.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer cvt-torch (checkpoint version {ck['version']})")
    return ck


def find_last(out_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` continues from, if the run directory has one."""
    p = Path(out_dir) / LAST
    return p if p.is_file() else None


# ---------------------------------------------------------------------------- random number generators
def capture_rng() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain python values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], [int(v) for v in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state.get("numpy")
    if n:
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state.get("python")
    if p:
        random.setstate((p[0], tuple(p[1]), p[2]))

"""Training checkpoints that lose nothing, written atomically, readable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain python values only (no classes, no numpy arrays)::

    {"format": "cvt-torch-train", "version": 1,
     "model": state dict, "optimizer": state dict, "scaler": state dict ({} without fp16), "ema": {...} | None,
     "state": TrainState.to_dict(): {"epoch", "step", "step_in_epoch", "sums", "best", "history", ...},
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor]},
     "config": TrainConfig as a dict, "model_config": CvTConfig as a dict, "classes": [...]}

Resuming needs no generator state: every random draw of a run is a pure function of ``(seed, epoch, step,
rank, sample)`` (see :func:`cvt.train.loop.step_seed`). ``rng`` holds the torch generators at the save only so
that cvt 0.1, which restores them, can read these files (its own files also hold numpy's and python's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

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
    """Write ``payload`` (plus the format tag) to ``path``: temporary file, fsync, rename.

    A full disk is a :class:`~cvt.core.errors.WriteError` naming ``path`` (the old file stays as it was).
    """
    payload = {"format": FORMAT, "version": VERSION, **payload}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            sink = _KeepWriteError(file)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is not None:  # the cause: "no space left ..." (atomic_write), or Ctrl-C (fit)
                    raise sink.error from None
                raise

    return atomic_write(path, write)


class _KeepWriteError:
    """A file for ``torch.save`` that remembers why the first write failed: torch's C++ writer turns any
    exception of a write into ``RuntimeError: [enforce fail ...] unexpected pos``, losing a full disk's
    ``OSError`` (ENOSPC, EFBIG) and a ``KeyboardInterrupt`` that arrived during the write."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except BaseException as e:  # kept, and re-raised as itself by save_checkpoint
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.file.flush()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same one-line message
        raise CheckpointError(f"{path}: not a readable training checkpoint ({first_line(e)})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cvt-torch training checkpoint")
    if saved.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer cvt-torch (checkpoint version {saved['version']})")
    return saved


def find_last(out_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` continues from, if the run directory has one."""
    path = Path(out_dir) / LAST
    return path if path.is_file() else None


def capture_rng() -> dict[str, Any]:
    """The torch generators' states (CPU, and every GPU's when CUDA is up), for the ``rng`` entry."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}

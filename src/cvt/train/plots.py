"""Pictures of a run: the learning curve and a confusion matrix (matplotlib's object API: no pyplot state)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_write

log = logging.getLogger(__name__)


def _figure(**options: Any) -> Any:
    """A matplotlib ``Figure`` outside pyplot (no backend chosen, no global state), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("plots skipped: matplotlib is not installed (pip install 'cvt-models[train]')")
        return None
    return Figure(**options)


def learning_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss and top-1 per epoch, training and validation, side by side. Returns the path (None: no matplotlib)."""
    fig = _figure(figsize=(10, 4)) if history else None
    if fig is None:
        return None
    epochs = [h["epoch"] for h in history]
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train (augmented, smoothed targets)")
    val = [h for h in history if h.get("val_loss") is not None]
    if val:
        ax_loss.plot([h["epoch"] for h in val], [h["val_loss"] for h in val], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], label="train (augmented)")
    if val:
        ax_acc.plot([h["epoch"] for h in val], [100 * h["val_top1"] for h in val], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path | None:
    """Rows: true class, columns: predicted; cells annotated with counts when there are few classes."""
    counts = np.asarray(matrix, dtype=np.int64)
    num_classes = counts.shape[0]
    size = min(12.0, max(4.0, 0.45 * num_classes))
    fig = _figure(figsize=(size + 1, size))
    if fig is None:
        return None
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if num_classes <= 30:
        names = [str(c)[:12] for c in classes]
        ax.set_xticks(range(num_classes), names, rotation=90 if num_classes > 10 else 0)
        ax.set_yticks(range(num_classes), names)
        largest = counts.max() if counts.size else 0
        for true in range(num_classes):
            for predicted in range(num_classes):
                count = counts[true, predicted]
                if count:
                    color = "white" if count > largest / 2 else "black"
                    ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path

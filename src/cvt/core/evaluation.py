"""Top-1 / top-5 of any front-end's model on an image folder, by class name. No framework.

:func:`evaluate_folder` is what ``cvt.keras.evaluate`` and ``cvt.flax.evaluate`` run: the folder's class folders
mapped to the model's classes by :func:`~cvt.core.classes.map_eval_classes` (the rule and the errors of ``cvt
eval``), each image decoded and prepared by the model's own preprocessing (:mod:`cvt.core.preprocess`), batches
handed to the front-end's ``forward`` (``(B, S, S, 3)`` or ``(B, 3, S, S)`` float32 -> ``(B, K)`` scores).
Unreadable images are left out and listed, as ``cvt eval`` does.

A non-finite output is never a score (:func:`finite_rows`, :data:`NON_FINITE`, :class:`NonFiniteOutputError`): the
rule every front-end and ``cvt predict`` / ``cvt eval`` apply to a model's outputs, here once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .classes import ClassMapping, eval_samples, read_eval_folder
from .config import CvTConfig
from .errors import CvtError, DataError, ImageError, UsageError
from .images import load_image
from .preprocess import EvalTransform
from .presets import default_spec
from .spec import PretrainedSpec

TOP_K = 5
# what is said of an input whose outputs hold NaN or inf (finite weights that overflow on it, or NaN pixels)
NON_FINITE = "the model's output is not finite (NaN or inf); no class can be ranked"


class NonFiniteOutputError(CvtError, ValueError):
    """A model output holding NaN or inf: an error for that input (exit status 1), never a percentage."""


def finite_rows(scores: object) -> np.ndarray:
    """``(B,)`` bool: which rows of ``(B, K)`` scores (logits or probabilities, anything numpy reads) are finite."""
    finite = np.isfinite(np.asarray(scores))
    return finite.all(axis=tuple(range(1, finite.ndim))) if finite.ndim > 1 else finite.reshape(-1)


@dataclass(frozen=True)
class FolderScore:
    """Accuracy on a folder: ``top1_hits`` / ``top5_hits`` of ``n`` readable images (top-5: top-K for fewer
    than 5 classes); ``skipped``: ``"path: reason"`` per unreadable image; ``mapping``: how the folder's classes
    met the model's (``mapping.rule``, ``mapping.note``); ``classes``: one name per model class; ``where``: the
    folder evaluated (a data root's ``val/``)."""

    n: int
    top1_hits: int
    top5_hits: int
    skipped: tuple[str, ...]
    mapping: ClassMapping
    classes: tuple[str, ...]
    where: str

    @property
    def top1(self) -> float:
        """Top-1 accuracy, a fraction in [0, 1]."""
        return self.top1_hits / self.n if self.n else 0.0

    @property
    def top5(self) -> float:
        """Top-5 accuracy, a fraction in [0, 1]."""
        return self.top5_hits / self.n if self.n else 0.0


def evaluate_folder(
    forward: Callable[[np.ndarray], object],
    folder: str | os.PathLike[str],
    config: CvTConfig,
    spec: PretrainedSpec | None = None,
    *,
    batch_size: int = 32,
    channels_last: bool = True,
) -> FolderScore:
    """Score ``forward`` (a model's inference call) on ``folder``: class folders, or a data root holding ``val/``.

    ``config``: the model's architecture (its ``num_classes``); ``spec``: its preprocessing and class names
    (``None``: the released checkpoints' rule for the config). ``forward`` gets ``(B, S, S, 3)`` float32 batches
    (``(B, 3, S, S)`` with ``channels_last=False``) and returns ``(B, num_classes)`` scores as anything numpy
    reads. Raises :class:`DataError` naming the folder when its classes cannot be mapped or no image reads.
    """
    if config.num_classes <= 0:
        raise UsageError("evaluate: the model has no classifier head (num_classes=0)")
    if batch_size < 1:
        raise UsageError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    spec = spec or default_spec(config)
    found = read_eval_folder(folder)
    mapped = eval_samples(found, config.num_classes, spec.labels)
    k = min(TOP_K, config.num_classes)
    top1 = top5 = n = 0
    skipped: list[str] = []
    non_finite: list[str] = []
    for images, targets, paths in _batches(mapped.samples, EvalTransform(spec.preprocess), batch_size, skipped):
        x = images.transpose(0, 2, 3, 1) if channels_last else images
        scores = np.asarray(forward(np.ascontiguousarray(x)), dtype=np.float64)
        if scores.shape != (len(targets), config.num_classes):
            raise UsageError(
                f"evaluate: forward gave shape {scores.shape} for {len(targets)} images, "
                f"expected ({len(targets)}, {config.num_classes})"
            )
        finite = finite_rows(scores)
        non_finite += [p for p, ok in zip(paths, finite) if not ok]
        scores, targets = scores[finite], targets[finite]
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, k) best first
        top1 += int((ranked[:, 0] == targets).sum())
        top5 += int((ranked == targets[:, None]).any(axis=1).sum())
        n += len(targets)
    if non_finite:  # an accuracy over the other images would hide that the model fails on these
        raise NonFiniteOutputError(
            f"{non_finite[0]}: {NON_FINITE} ({len(non_finite)} of {n + len(non_finite)} images in {found.where})"
        )
    if n == 0:
        first = skipped[0] if skipped else "none"
        raise DataError(f"{found.where}: none of its {len(mapped.samples)} images could be read (first: {first})")
    return FolderScore(n, top1, top5, tuple(skipped), mapped.mapping, tuple(mapped.classes), found.where)


def _batches(
    samples: list[tuple[str, int]], transform: EvalTransform, batch_size: int, skipped: list[str]
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """``(images (B, 3, S, S) float32, class indices (B,), their paths)`` of the readable images; the others go to
    ``skipped``."""
    images: list[np.ndarray] = []
    targets: list[int] = []
    paths: list[str] = []
    for path, target in samples:
        try:
            images.append(transform(load_image(path)))
            targets.append(target)
            paths.append(path)
        except ImageError as e:  # one unreadable file must not stop the evaluation
            msg = str(e)
            skipped.append(msg if msg.startswith(path) else f"{path}: {msg}")
        if len(images) == batch_size:
            yield np.stack(images), np.asarray(targets), paths
            images, targets, paths = [], [], []
    if images:
        yield np.stack(images), np.asarray(targets), paths

"""``evaluate(model, folder)``: a Flax CvT's top-1 / top-5 on an image folder, classes matched by name.

The folder's class folders map to the model's classes by the rule and with the errors of ``cvt eval``
(:func:`cvt.core.classes.map_eval_classes`: the model's own labels, class indices or ImageNet synset ids); images
are prepared by the model's own preprocessing (``model.pretrained_cfg``). The loop is the core's
(:func:`cvt.core.evaluation.evaluate_folder`); this module only runs the model.
"""

from __future__ import annotations

import os

from flax import nnx

from ..core.evaluation import FolderScore, evaluate_folder
from .model import CvT, jit_forward


def evaluate(model: CvT, folder: str | os.PathLike[str], *, batch_size: int = 32) -> FolderScore:
    """Top-1 / top-5 of ``model`` in eval mode on ``folder``: class folders, or a data root holding ``val/``.

    ``model`` itself is left as it is (a training-mode model stays in training mode). Returns a
    :class:`~cvt.core.evaluation.FolderScore` (``top1``, ``top5``, hit counts, ``n``, skipped files, the class
    mapping). Raises :class:`~cvt.core.errors.DataError` naming the folder when its classes are not the model's
    or no image reads.
    """
    view = nnx.merge(*nnx.split(model))  # the same arrays, its own eval-mode flags: the caller's model is untouched
    view.eval()
    forward = jit_forward(view)  # (B, S, S, 3) -> (B, K), compiled once per batch shape
    return evaluate_folder(forward, folder, model.config, model.pretrained_cfg, batch_size=batch_size)

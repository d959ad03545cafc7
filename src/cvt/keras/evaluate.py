"""``evaluate(model, folder)``: a Keras CvT's top-1 / top-5 on an image folder, classes matched by name.

The folder's class folders map to the model's classes by the rule and with the errors of ``cvt eval``
(:func:`cvt.core.classes.map_eval_classes`: the model's own labels, class indices or ImageNet synset ids); images
are prepared by the model's own preprocessing (``model.pretrained_cfg``). The loop is the core's
(:func:`cvt.core.evaluation.evaluate_folder`); this module only runs the model.
"""

from __future__ import annotations

import os

import numpy as np

from ..core.evaluation import FolderScore, evaluate_folder
from .classifier import CvTImageClassifier


def evaluate(model: CvTImageClassifier, folder: str | os.PathLike[str], *, batch_size: int = 32) -> FolderScore:
    """Top-1 / top-5 of ``model`` (inference mode) on ``folder``: class folders, or a data root holding ``val/``.

    Returns a :class:`~cvt.core.evaluation.FolderScore` (``top1``, ``top5``, hit counts, ``n``, skipped files,
    the class mapping). Raises :class:`~cvt.core.errors.DataError` naming the folder when its classes are not
    the model's or no image reads.
    """

    def forward(images: np.ndarray) -> np.ndarray:  # (B, S, S, 3) or (B, 3, S, S) -> (B, K)
        return model.predict_on_batch(images)  # compiled once per batch shape (tf.function / jax.jit)

    return evaluate_folder(
        forward,
        folder,
        model.cvt_config,
        model.pretrained_cfg,
        batch_size=batch_size,
        channels_last=model.backbone.data_format == "channels_last",
    )

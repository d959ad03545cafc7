"""``CvTImagePreprocessor``: images -> the batch a Keras CvT takes, by the official evaluation pipeline exactly.

The geometry and normalisation are the core's (:mod:`cvt.core.preprocess`, PIL bicubic as torchvision): resize
256 / centre-crop 224 for the 224 checkpoints, a square resize at 384, ImageNet mean/std. It runs on the host in
numpy (an in-graph resize would not be PIL's bicubic), so it goes in a ``tf.data`` / generator pipeline or before
``model.predict``. Framework-free apart from the data format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.images import load_image, to_pil
from ..core.preprocess import EvalTransform
from ..core.presets import default_spec, get_config
from ..core.spec import EvalPreprocess, PretrainedSpec
from .backbone import check_data_format


class CvTImagePreprocessor:
    """``preprocessor(images)`` -> ``(B, H, W, 3)`` float32 (``(B, 3, H, W)`` with ``"channels_first"``).

    ``images``: a path, a PIL image, an ``(H, W, 3)`` uint8 array, or a sequence of them.
    """

    def __init__(self, preprocess: EvalPreprocess | PretrainedSpec | None = None, data_format: str | None = None):
        if isinstance(preprocess, PretrainedSpec):
            preprocess = preprocess.preprocess
        self.preprocess = preprocess or EvalPreprocess()
        self.data_format = check_data_format(data_format)
        self._transform = EvalTransform(self.preprocess)

    @classmethod
    def from_preset(cls, name: str, data_format: str | None = None) -> CvTImagePreprocessor:
        """The pipeline of a registry name (``"cvt-13-384-22k"``: square 384 resize)."""
        return cls(default_spec(get_config(name)), data_format)

    def _one(self, image: Any) -> np.ndarray:
        img = load_image(image) if isinstance(image, (str, os.PathLike)) else to_pil(image)
        x = self._transform(img)  # (3, H, W)
        return x if self.data_format == "channels_first" else np.ascontiguousarray(x.transpose(1, 2, 0))

    def __call__(self, images: Any) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4:  # (B, H, W, C) uint8
            images = list(images)
        single = isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence)
        batch = [images] if single else list(images)
        return np.stack([self._one(im) for im in batch])

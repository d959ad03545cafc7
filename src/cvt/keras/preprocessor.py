"""``CvTImagePreprocessor``: images -> the batch a Keras CvT takes, by the official evaluation pipeline exactly.

The geometry and normalisation are the core's (:mod:`cvt.core.preprocess`, PIL bicubic as torchvision): resize
256 / centre-crop 224 for the 224 checkpoints, a square resize at 384, ImageNet mean/std. So its output equals
``cvt predict``'s preprocessing bit for bit.

Why it is not a Keras layer: a layer runs inside the model's graph (``tf.function`` / ``jax.jit``), where the
resize would be TensorFlow's or JAX's bicubic, not PIL's, and the logits would drift from the official evaluation
(by up to a few 1e-2 on real photos). It runs on the host in numpy, before ``model.predict`` or in a ``tf.data`` /
generator pipeline; a :class:`~cvt.keras.classifier.CvTImageClassifier` with one attached
(``classifier.preprocessor``, set by ``from_preset`` / ``create_model``) applies it to raw uint8 images itself.
It is still Keras-serialisable (``get_config`` / ``from_config``, registered as ``cvt>CvTImagePreprocessor``): a
preset stores it as ``preprocessor.json``, a ``.keras`` file inside the classifier's config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core.images import load_image, to_pil
from ..core.preprocess import EvalTransform
from ..core.presets import default_spec, get_config
from ..core.spec import EvalPreprocess, PretrainedSpec
from .backbone import check_data_format


@keras.saving.register_keras_serializable(package="cvt")
class CvTImagePreprocessor:
    """``preprocessor(images)`` -> ``(B, H, W, 3)`` float32 (``(B, 3, H, W)`` with ``"channels_first"``).

    ``images``: a path, a PIL image, one image as an array or tensor, a batch (a 4-d array or tensor), or a
    sequence of any of these. Arrays and tensors are read by :func:`cvt.core.images.to_pil`: numpy, TensorFlow,
    JAX and Keras images ``(H, W, C)``, torch tensors ``(C, H, W)`` (batches ``(B, H, W, C)`` / ``(B, C, H, W)``),
    uint8, uint16 or float in [0, 1].

    Args:
        preprocess: the pipeline: a :class:`PretrainedSpec` (kept whole: its labels travel with it into a
            preset's ``preprocessor.json``), an :class:`EvalPreprocess`, or ``None`` (224, crop 0.875, ImageNet).
        data_format: of the output; ``None``: Keras' global ``image_data_format()``.
    """

    def __init__(self, preprocess: EvalPreprocess | PretrainedSpec | None = None, data_format: str | None = None):
        spec = preprocess if isinstance(preprocess, PretrainedSpec) else PretrainedSpec(preprocess or EvalPreprocess())
        self.spec = spec
        self.preprocess = spec.preprocess
        self.data_format = check_data_format(data_format)
        self._transform = EvalTransform(self.preprocess)

    @classmethod
    def from_preset(cls, name: str, data_format: str | None = None) -> CvTImagePreprocessor:
        """The pipeline of a registry name (``"cvt-13-384-22k"``: square 384 resize) or a ``cvt.keras`` preset
        directory (its ``preprocessor.json``)."""
        from ..core import kerasfile

        if Path(name).is_dir() and kerasfile.is_preset(Path(name)):
            config, spec, _ = kerasfile.read_preset_config(Path(name))
            return cls(spec or default_spec(config), data_format)
        return cls(default_spec(get_config(name)), data_format)

    def get_config(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "data_format": self.data_format}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CvTImagePreprocessor:
        """Inverse of :meth:`get_config` (also takes ``{"preprocess": <EvalPreprocess dict>}``)."""
        if isinstance(config.get("spec"), Mapping):
            pre: EvalPreprocess | PretrainedSpec = PretrainedSpec.from_dict(config["spec"])
        else:
            pre = EvalPreprocess.from_dict(config.get("preprocess") or {})
        return cls(pre, config.get("data_format"))

    def _one(self, image: Any) -> np.ndarray:
        img = load_image(image) if isinstance(image, (str, os.PathLike)) else to_pil(image)
        x = self._transform(img)  # (3, H, W)
        return x if self.data_format == "channels_first" else np.ascontiguousarray(x.transpose(1, 2, 0))

    def __call__(self, images: Any) -> np.ndarray:
        if getattr(images, "ndim", None) == 4:  # a batch: split on the first axis, each keeps its library's layout
            batch = [images[i] for i in range(int(images.shape[0]))]
        elif isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            batch = [images]
        else:
            batch = list(images)
        if not batch:  # an empty batch: an empty result of the output's shape, not np.stack's error
            size = self.preprocess.img_size
            shape = (0, 3, size, size) if self.data_format == "channels_first" else (0, size, size, 3)
            return np.zeros(shape, np.float32)
        return np.stack([self._one(im) for im in batch])

    def __repr__(self) -> str:
        p = self.preprocess
        return f"CvTImagePreprocessor(img_size={p.img_size}, crop_pct={p.crop_pct}, data_format={self.data_format!r})"

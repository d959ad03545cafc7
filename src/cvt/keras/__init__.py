"""CvT for Keras 3: the official model and weights, exact on the TensorFlow, JAX and torch backends.

Written with ``keras.layers`` + ``keras.ops`` only (depends on ``keras``, not keras-hub), in keras-hub's shape:

* :class:`CvTBackbone` (functional; per-stage feature maps), :class:`CvTImageClassifier` (final LayerNorm,
  cls-token or mean pooling, logits by default, ``compile()`` defaults), :class:`CvTImagePreprocessor` (the
  official evaluation pipeline, exactly);
* :func:`create_model` (the same names and weight sources as :func:`cvt.create_model`) and :func:`from_preset`;
* :func:`CvT`: a drop-in for the TF port's ``cvt_tensorflow.CvT(configuration=..., pretrained=...)``;
* :meth:`CvTBackbone.save_to_preset` / :meth:`CvTImageClassifier.save_to_preset` and ``from_preset``: keras-hub's
  preset directories (:mod:`cvt.keras.preset`);
* :func:`save_native` / :func:`load_weights` (our native safetensors: one file for PyTorch, Keras and Flax),
  :func:`export_saved_model` / :func:`export_litert`.
"""

from .backend import KerasBackendError, import_keras

import_keras()  # one line naming KERAS_BACKEND when Keras has no usable backend (before any module imports keras)

from .backbone import CvTBackbone  # noqa: E402
from .classifier import CvTImageClassifier  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .export import export_litert, export_saved_model  # noqa: E402
from .preprocessor import CvTImagePreprocessor  # noqa: E402
from .tfport import CvT  # noqa: E402
from .weights import create_model, from_preset, load_weights, native_variables, save_native, state_dict  # noqa: E402

__all__ = [
    "CvT",
    "CvTBackbone",
    "CvTImageClassifier",
    "CvTImagePreprocessor",
    "KerasBackendError",
    "create_model",
    "evaluate",
    "export_litert",
    "export_saved_model",
    "from_preset",
    "load_weights",
    "native_variables",
    "save_native",
    "state_dict",
]

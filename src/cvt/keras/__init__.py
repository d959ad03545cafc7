"""CvT for Keras 3: the official model and weights, exact on the TensorFlow, JAX and torch backends.

Written with ``keras.layers`` + ``keras.ops`` only (depends on ``keras``, not keras-hub), in keras-hub's shape:

* :class:`CvTBackbone` (functional; per-stage feature maps), :class:`CvTImageClassifier` (final LayerNorm,
  cls-token or mean pooling, logits by default, ``compile()`` defaults), :class:`CvTImagePreprocessor` (the
  official evaluation pipeline, exactly);
* :func:`create_model` (the same names and weight sources as :func:`cvt.create_model`) and :func:`from_preset`;
* :func:`CvT`: a drop-in for the TF port's ``cvt_tensorflow.CvT(configuration=..., pretrained=...)``;
* :func:`save_native` / :func:`load_weights` (our native safetensors: one file for PyTorch, Keras and Flax),
  :func:`export_saved_model` / :func:`export_litert`.
"""

from .backbone import CvTBackbone
from .classifier import CvTImageClassifier
from .evaluate import evaluate
from .export import export_litert, export_saved_model
from .preprocessor import CvTImagePreprocessor
from .tfport import CvT
from .weights import create_model, from_preset, load_weights, native_variables, save_native, state_dict

__all__ = [
    "CvT",
    "CvTBackbone",
    "CvTImageClassifier",
    "CvTImagePreprocessor",
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

"""The framework-free core of cvt: everything that is not a neural-network framework.

Architecture configs and presets, geometry, MAC counts, weight-key conversion rules, the pretrained spec
(preprocessing, labels, licence), image decoding and evaluation preprocessing to numpy, labels, the native
file's metadata, atomic file writes and the error types. It imports numpy and Pillow, never torch, Keras,
TensorFlow or JAX (a test imports it with those made unimportable), so the PyTorch (``cvt``), Keras
(``cvt.keras``) and Flax (``cvt.flax``) front-ends all stand on it.
"""

from .config import CvTConfig, StageConfig, conv_out
from .errors import (
    ConfigError,
    ConversionError,
    CvtError,
    DataError,
    ImageError,
    LabelError,
    MissingDependencyError,
    UnknownModelError,
    UsageError,
    WeightsError,
    WriteError,
)
from .macs import count_macs, count_params
from .presets import ARCHITECTURES, CHECKPOINTS, Checkpoint, get_checkpoint, get_config, list_models
from .spec import EvalPreprocess, PretrainedSpec

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINTS",
    "Checkpoint",
    "ConfigError",
    "ConversionError",
    "CvTConfig",
    "CvtError",
    "DataError",
    "EvalPreprocess",
    "ImageError",
    "LabelError",
    "MissingDependencyError",
    "PretrainedSpec",
    "StageConfig",
    "UnknownModelError",
    "UsageError",
    "WeightsError",
    "WriteError",
    "conv_out",
    "count_macs",
    "count_params",
    "get_checkpoint",
    "get_config",
    "list_models",
]

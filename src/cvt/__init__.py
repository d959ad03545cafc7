"""cvt-torch: the Convolutional vision Transformer (CvT, Wu et al. 2021), exact to the official model.

>>> import cvt
>>> model = cvt.create_model("cvt-13")              # random init, official numerics
>>> logits = model(torch.randn(1, 3, 224, 224))     # (1, 1000)
"""

from .config import ConfigError, CvTConfig, StageConfig
from .factory import create_model
from .flops import count_macs, count_params
from .model import CvT, count_parameters
from .predict import Prediction, Predictor
from .registry import CHECKPOINTS, get_config, list_models
from .weights.io import WeightsError

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINTS",
    "ConfigError",
    "CvT",
    "CvTConfig",
    "Prediction",
    "Predictor",
    "StageConfig",
    "WeightsError",
    "__version__",
    "count_macs",
    "count_parameters",
    "count_params",
    "create_model",
    "get_config",
    "list_models",
]

"""cvt: the Convolutional vision Transformer (CvT, Wu et al. 2021), exact to the official model.

>>> import cvt
>>> model = cvt.create_model("cvt-13")              # random init, official numerics (needs torch)
>>> logits = model(torch.randn(1, 3, 224, 224))     # (1, 1000)

``import cvt`` loads only the framework-free core (configs, presets, errors). The PyTorch names
(``create_model``, ``CvT``, ``Predictor`` ...) are imported on first use; without torch installed they raise
one line naming the extra to install (``pip install 'cvt-models[torch]'``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .core import (
    CHECKPOINTS,
    ConfigError,
    CvTConfig,
    CvtError,
    EvalPreprocess,
    PretrainedSpec,
    StageConfig,
    WeightsError,
    count_macs,
    count_params,
    get_config,
    list_models,
)

__version__ = "0.4.0"

# name -> module, imported on first access (PEP 562), so `import cvt` needs no torch
_TORCH_NAMES = {
    "CvT": "cvt.torch.model",
    "count_parameters": "cvt.torch.model",
    "create_model": "cvt.torch.factory",
    "fuse": "cvt.torch.fusion",
    "Prediction": "cvt.predict",
    "Predictor": "cvt.predict",
    "save_pretrained": "cvt.torch.weights",
}


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'cvt' has no attribute {name!r}")
    from .core.errors import require

    require("torch", "torch", f"cvt.{name}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TORCH_NAMES))


__all__ = [
    "CHECKPOINTS",
    "ConfigError",
    "CvT",
    "CvTConfig",
    "CvtError",
    "EvalPreprocess",
    "Prediction",
    "Predictor",
    "PretrainedSpec",
    "StageConfig",
    "WeightsError",
    "__version__",
    "count_macs",
    "count_parameters",
    "count_params",
    "create_model",
    "fuse",
    "get_config",
    "list_models",
    "save_pretrained",
]

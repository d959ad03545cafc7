"""Training: the paper's recipe, resumable after a crash, distributed with ``torchrun``.

>>> from cvt.train import fit, load_config
>>> result = fit()                                        # the embedded default: digits, ~2 min on 2 cores
>>> result = fit("configs/cvt-13-imagenet.yaml", overrides=["data.root=/data/imagenet"], resume=True)

The loop is importable apart from argument parsing: :func:`fit` (a whole run), :func:`train_one_epoch`
(one epoch), :func:`lr_at` (the schedule, a pure function), :func:`param_groups` (no weight decay on norms,
biases and the cls token).
"""

from .config import TrainConfig, TrainConfigError, load_config, validate
from .loop import TrainingDiverged, train_one_epoch
from .optim import build_optimizer, lr_at, param_groups
from .runner import FitResult, TrainError, fit

__all__ = [
    "FitResult",
    "TrainConfig",
    "TrainConfigError",
    "TrainError",
    "TrainingDiverged",
    "build_optimizer",
    "fit",
    "load_config",
    "lr_at",
    "param_groups",
    "train_one_epoch",
    "validate",
]

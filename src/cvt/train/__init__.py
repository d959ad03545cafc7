"""Training: the paper's recipe, resumable after a crash, distributed with ``torchrun``.

>>> from cvt.train import fit, load_config
>>> result = fit()                                        # the embedded default: digits, ~2 min on 2 cores
>>> result = fit("configs/cvt-13-imagenet.yaml", overrides=["data.root=/data/imagenet"], resume=True)

Read top-down: :mod:`.config` (the typed recipe), :mod:`.trainer` (``setup(cfg) -> Trainer``: everything a
run is built from; ``TrainState``: where it is), :mod:`.loop` (``train_one_epoch``), :mod:`.runner`
(``fit``: setup, restore, epochs, checkpoints, summary; ``dry_run``). :func:`lr_at` is the schedule (a pure
function); :func:`param_groups` puts no weight decay on norms, biases and the cls token.
"""

from .config import TrainConfig, TrainConfigError, load_config, validate
from .loop import TrainingDiverged, train_one_epoch
from .optim import build_optimizer, lr_at, param_groups
from .runner import FitResult, TrainInterrupted, dry_run, fit
from .trainer import EpochStats, Trainer, TrainError, TrainState, setup

__all__ = [
    "EpochStats",
    "FitResult",
    "TrainConfig",
    "TrainConfigError",
    "TrainError",
    "TrainInterrupted",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "build_optimizer",
    "dry_run",
    "fit",
    "load_config",
    "lr_at",
    "param_groups",
    "setup",
    "train_one_epoch",
    "validate",
]

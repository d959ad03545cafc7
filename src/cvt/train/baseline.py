"""The digits recipe's yardstick: scikit-learn's ``SVC()`` on the very split the CvT trains and validates on."""

from __future__ import annotations

import numpy as np

from ..data.sources import DigitsImages


def svc_baseline(train: DigitsImages, val: DigitsImages) -> float:
    """Top-1 of scikit-learn's ``SVC()`` (RBF kernel, default C and gamma) on the raw 64 pixels (0..16)."""
    from sklearn.svm import SVC  # the `train` extra; imported only when a digits run asks for the baseline

    def flat(split: DigitsImages) -> np.ndarray:
        return split.images.reshape(len(split), -1).astype(np.float64) * (16.0 / 255.0)

    classifier = SVC().fit(flat(train), train.targets)
    return float(classifier.score(flat(val), val.targets))

"""The digits recipe's yardstick: scikit-learn's ``SVC()`` on the very split the CvT trains and validates on."""

from __future__ import annotations

import numpy as np

from ..data.datasets import DigitsImages


def svc_baseline(train: DigitsImages, val: DigitsImages) -> float:
    """Top-1 of scikit-learn's ``SVC()`` (RBF kernel, default C and gamma) on the raw 64 pixels (0..16)."""
    from sklearn.svm import SVC  # the `train` extra; imported only when a digits run asks for the baseline

    def flat(ds: DigitsImages) -> np.ndarray:
        return ds.images.reshape(len(ds), -1).astype(np.float64) * (16.0 / 255.0)

    clf = SVC().fit(flat(train), train.targets)
    return float(clf.score(flat(val), val.targets))

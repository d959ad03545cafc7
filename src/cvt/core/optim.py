"""The no-weight-decay rule every front-end's optimizer follows, stated once over native names (framework-free).

As in the official code: no weight decay on biases, on norm parameters (LayerNorm / BatchNorm weights and
biases: all 1-d) and on the cls tokens; every other weight decays, depthwise convolution kernels included.
PyTorch asks :func:`decays` for each named parameter (:func:`cvt.train.optim.param_groups`), Flax for each
leaf of its parameter state (:func:`cvt.flax.train.decay_mask`), Keras for each variable
(``CvTImageClassifier.compile``); Keras and Flax first map their variables to native (PyTorch) names.
"""

from __future__ import annotations

from collections.abc import Collection

NO_DECAY_LEAVES = ("bias", "cls_token")  # by the name's last part; norms are excluded by their shape (1-d)


def decays(native_name: str, ndim: int, skip: Collection[str] = ()) -> bool:
    """Whether the weight ``native_name`` (e.g. ``stages.0.blocks.0.mlp.fc1.weight``) of ``ndim`` dimensions
    takes weight decay.

    ``skip``: further names without decay, whole or as a dotted suffix (a model's ``no_weight_decay()``).
    The number of dimensions is the same in every front-end's layout (a transpose keeps it).
    """
    if ndim <= 1 or native_name.rsplit(".", 1)[-1] in NO_DECAY_LEAVES:
        return False
    return not any(native_name == name or native_name.endswith("." + name) for name in skip)

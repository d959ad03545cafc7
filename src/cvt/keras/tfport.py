"""A drop-in for the TF port's entry point: ``cvt_tensorflow.CvT(configuration=..., pretrained=...)``.

The port (``cvt-tensorflow`` 1.1.4, TF 2.9 only) built a ``tf.keras.Model``; :func:`CvT` takes the same arguments
with the same meanings and returns a Keras 3 :class:`~cvt.keras.CvTImageClassifier` (its layers keep the port's
names ``stage0..2``, ``norm``, ``head``). Its ``.h5`` weight files load with ``weights=`` here or
:func:`cvt.keras.load_weights`. Differences: no global seeding on import; ``pretrained=True`` downloads our
copy of the released checkpoint (the same weights); a ``num_classes`` other than 1000 with ``pretrained=True``
keeps the pretrained backbone under a fresh head (the port refused).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..core.config import CvTConfig
from ..core.errors import UsageError
from .classifier import CvTImageClassifier
from .weights import create_model

# (configuration, resolution, version) -> our registry's checkpoint name
PORT_CHECKPOINTS = {
    ("cvt-13", 224, "1k"): "cvt-13",
    ("cvt-13", 384, "1k"): "cvt-13-384",
    ("cvt-21", 224, "1k"): "cvt-21",
    ("cvt-21", 384, "1k"): "cvt-21-384",
    ("cvt-13", 384, "22k"): "cvt-13-384-22k",
    ("cvt-21", 384, "22k"): "cvt-21-384-22k",
    ("cvt-w24", 384, "22k"): "cvt-w24-384-22k",
}
ACT_LAYERS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def port_checkpoint(configuration: str, resolution: int, version: str) -> str:
    """Our checkpoint name for the port's ``(configuration, pretrained_resolution, pretrained_version)``."""
    key = (configuration.lower(), int(resolution), str(version).lower())
    if key not in PORT_CHECKPOINTS:
        valid = ", ".join(f"{c}/{r}/{v}" for c, r, v in PORT_CHECKPOINTS)
        raise UsageError(
            f"no released weights for {'/'.join(map(str, key))} (configuration/resolution/version): {valid}"
        )
    return PORT_CHECKPOINTS[key]


def CvT(
    configuration: str | None = None,
    pretrained: bool = False,
    pretrained_resolution: int = 224,
    pretrained_version: str = "1k",
    *,
    spec: Mapping[str, Any] | None = None,
    in_chans: int = 3,
    num_classes: int = 1000,
    act_layer: str = "quick_gelu",
    classifier_activation: str | None = None,
    data_format: str | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> CvTImageClassifier:
    """The port's ``CvT(...)`` (module docstring).

    Args:
        configuration: ``"cvt-13"`` / ``"cvt-21"`` / ``"cvt-w24"``, or ``None`` to build from ``spec``.
        pretrained: load the released weights for ``(configuration, pretrained_resolution, pretrained_version)``.
        pretrained_resolution: 224 or 384.
        pretrained_version: ``"1k"`` (ImageNet-1k) or ``"22k"`` (ImageNet-22k pre-trained, 1k fine-tuned).
        spec: the official ``MODEL.SPEC`` dict (``DIM_EMBED``, ``DEPTH``, ...) when ``configuration`` is ``None``.
        in_chans, num_classes: input channels and head size.
        act_layer: ``"quick_gelu"`` (official) or ``"gelu"``.
        classifier_activation: ``None`` (logits) or a Keras activation name such as ``"softmax"``.
        data_format: ``"channels_last"`` / ``"channels_first"``; ``None``: Keras' global setting (as the port).
        weights: a weight file to load, e.g. the port's own ``.h5`` (an extension over the port).
    """
    if act_layer not in ACT_LAYERS:
        raise UsageError(f"act_layer: {act_layer!r} is not one of {sorted(ACT_LAYERS)}")
    if configuration is None:
        if spec is None:
            raise UsageError("give configuration='cvt-13' | 'cvt-21' | 'cvt-w24', or spec={...} (the official SPEC)")
        if pretrained:
            raise UsageError("pretrained=True needs a configuration name, not a spec")
        name: str | CvTConfig = CvTConfig.from_official_spec(spec, in_chans=in_chans, num_classes=num_classes)
    elif pretrained:
        name = port_checkpoint(configuration, pretrained_resolution, pretrained_version)
    else:
        name = configuration.lower()
    kwargs: dict[str, Any] = dict(
        activation=ACT_LAYERS[act_layer], classifier_activation=classifier_activation, data_format=data_format
    )
    if configuration is not None:
        kwargs.update(num_classes=num_classes)
        if in_chans != 3:
            kwargs["in_chans"] = in_chans
    return create_model(name, pretrained=pretrained, weights=weights, **kwargs)

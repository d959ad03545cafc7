"""Weights for the Keras CvT: native names <-> Keras variables, building models from any weight file, saving.

A variable's native (PyTorch) name is its attribute path (the layers carry the official attribute names:
``stages.0.blocks.1.attn.conv_proj_q.bn.gamma`` -> ``...bn.weight``); Keras' leaf names map to PyTorch's
(``gamma``/``beta``/``moving_mean``/``moving_variance`` -> ``weight``/``bias``/``running_mean``/``running_var``), and
kernels change layout by the core's one table (:mod:`cvt.core.layouts`: ``Conv2D`` HWIO, ``DepthwiseConv2D``
``(k, k, C, 1)``, ``Dense`` ``(in, out)``).

Files are read by :func:`cvt.core.weights.read_arrays` / :func:`~cvt.core.weights.resolve` into numpy: native
and HF safetensors, official ``.pth`` and HF ``.bin`` (:mod:`cvt.core.pickles`), all without torch; the TF port's
``.h5`` (:mod:`cvt.core.tfport`). Loading is the core's one protocol (:mod:`cvt.core.loading`): missing,
unexpected or mis-shaped tensors are refused in one :class:`~cvt.core.errors.WeightsError`, a head with another
class count is a new head for fine-tuning, as in PyTorch and Flax. Saving writes our native safetensors (the same
file loads in PyTorch and Flax) or Keras' own ``.weights.h5`` / ``.keras``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core.config import CvTConfig
from ..core.layouts import to_torch
from ..core.loading import FitReport, Slot, match
from ..core.presets import weight_source
from ..core.spec import PretrainedSpec
from ..core.weights import read_arrays, resolve, save_native_arrays, with_overrides
from .backbone import CvTBackbone
from .classifier import CvTImageClassifier
from .layers import skip_init

# Keras' own weight names -> the native (PyTorch) leaf names
_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# Keras' built-in layers whose ``kernel`` is a native ``weight``, and that kernel's layout kind (cvt.core.layouts)
_KERNELS = (
    (keras.layers.DepthwiseConv2D, "depthwise"),  # before Conv2D: in some Keras versions it subclasses it
    (keras.layers.Conv2D, "conv"),
    (keras.layers.Dense, "dense"),
)


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, Any, str]]:
    """``(native name, variable, layout kind)`` below ``obj``: the attribute path is the native name (the layers
    carry the official attribute names), so no name is spelled twice."""
    for cls, kind in _KERNELS:
        if isinstance(obj, cls):
            yield prefix + "weight", obj.kernel, kind
            if obj.use_bias:
                yield prefix + "bias", obj.bias, "same"
            return
    # NOTE: on Keras' torch backend a layer is also a torch Module, which keeps sublayers in ``_modules``
    for attr in dict.fromkeys([*vars(obj), *getattr(obj, "_modules", {})]):
        if attr.startswith("_"):
            continue
        value = getattr(obj, attr)
        if isinstance(value, keras.Variable):
            yield prefix + _LEAVES.get(attr, attr), value, "same"
        elif isinstance(value, keras.layers.Layer):
            yield from _walk(value, f"{prefix}{attr}.")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, keras.layers.Layer) for v in value):
            for i, layer in enumerate(value):
                yield from _walk(layer, f"{prefix}{attr}.{i}.")


def native_variables(model: CvTBackbone | CvTImageClassifier) -> dict[str, tuple[Any, str]]:
    """``{native name: (Keras variable, layout kind)}`` for every variable of a backbone or classifier."""
    if isinstance(model, CvTImageClassifier):
        found = [*_walk(model.backbone, ""), *_walk(model.norm, "norm.")]
        if model.head is not None:
            found += _walk(model.head, "head.")
    else:
        found = list(_walk(model, ""))
    return {name: (var, kind) for name, var, kind in found}


def state_dict(model: CvTBackbone | CvTImageClassifier) -> dict[str, np.ndarray]:
    """The model's weights as numpy under the native names and PyTorch layouts (what :func:`save_native` writes)."""
    out = {}
    for name, (var, kind) in native_variables(model).items():
        arr = np.asarray(keras.ops.convert_to_numpy(var))
        if name.endswith("num_batches_tracked"):
            arr = arr.astype(np.int64)  # PyTorch's dtype
        out[name] = to_torch(kind, arr)
    return out


def load_state_dict(
    model: CvTBackbone | CvTImageClassifier, sd: Mapping[str, Any], source: object = "state dict"
) -> FitReport:
    """Assign a native state dict to ``model`` by the core's one protocol (:func:`cvt.core.loading.match`).

    Raises :class:`~cvt.core.errors.WeightsError` (one short line) for tensors that do not fit; a head of another
    class count stays fresh, a model without a head drops the file's (both noted in the report). A backbone takes
    the file's stages and ignores its ``norm.`` / ``head.`` tensors.
    """
    targets = native_variables(model)
    if isinstance(model, CvTBackbone):
        sd = {k: v for k, v in sd.items() if k.split(".")[0] not in ("norm", "head")}
    slots = {name: Slot(tuple(var.shape), kind) for name, (var, kind) in targets.items()}
    values, report = match(slots, sd, source=source)
    for name, arr in values.items():
        var = targets[name][0]
        var.assign(arr.astype(keras.backend.standardize_dtype(var.dtype)))
    return report


def create_model(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    activation: str | None = None,
    data_format: str | None = None,
    classifier_activation: str | None = None,
    pooling: str | None = None,
    **overrides: Any,
) -> CvTImageClassifier:
    """Build a Keras CvT classifier; the same names, weight sources and rules as :func:`cvt.create_model`.

    Args:
        name: an architecture or checkpoint name (``cvt.core.list_models()``), a :class:`CvTConfig`, or ``None``
            to take the architecture from ``weights``.
        weights: a local weight file or directory in any supported layout (native / HF safetensors, official
            ``.pth`` or HF ``.bin`` (read without torch), the TF port's ``.h5``).
        pretrained: download the released checkpoint ``name`` from the Hugging Face hub (cached).
        num_classes: head size; ``None`` keeps the file's, another number puts a fresh head on the loaded
            backbone (fine-tuning), ``0`` removes it (pooled features out).
        activation: ``"quick_gelu"`` or ``"gelu"``; default (:mod:`cvt.core.weights`): a native file's record,
            else ``quick_gelu`` for a released checkpoint name, else ``gelu`` for an HF directory, else
            ``quick_gelu`` (official ``.pth``, TF-port ``.h5``, an architecture name alone).
        data_format: ``"channels_last"`` (default: Keras' global setting) or ``"channels_first"``.
        classifier_activation: applied to the logits (``None``: logits; ``"softmax"``: probabilities).
        pooling: ``"token"`` / ``"avg"`` (``None``: the cls token when there is one).
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).

    Returns:
        The model (``model.pretrained_cfg``: preprocessing and labels; ``model.load_report``: what loading found,
        a :class:`~cvt.core.loading.FitReport`).
    """
    config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained)
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **overrides)
    with skip_init() if loaded is not None else contextlib.nullcontext():  # weights overwrite the init
        backbone = CvTBackbone(config, data_format=data_format, name="backbone")
    model = CvTImageClassifier(
        backbone,
        activation=classifier_activation,
        pooling=pooling,
        pretrained_cfg=spec,
        name=config.name.replace("-", "_"),
    )
    model.load_report = FitReport()
    if loaded is not None:
        model.load_report = load_state_dict(model, loaded.state_dict, source=loaded.path)
    model.load_notes = model.load_report.notes  # the 0.2 name
    return model


def from_preset(preset: str, **kwargs: Any) -> CvTImageClassifier:
    """keras-hub's spelling: a registry checkpoint name (downloaded once, e.g. ``"cvt-13-384-22k"``), an
    architecture name (random weights), or a local weight file / directory."""
    source = weight_source(preset)
    return create_model(source.name, weights=source.weights, pretrained=source.pretrained, **kwargs)


def save_native(
    model: CvTImageClassifier | CvTBackbone, path: str | os.PathLike[str], spec: PretrainedSpec | None = None
) -> Path:
    """Our native ``.safetensors`` (config and spec in its metadata): loads in PyTorch, Keras and Flax."""
    config = model.cvt_config if isinstance(model, CvTImageClassifier) else model.cvt_config.replace(num_classes=0)
    if spec is None:
        spec = getattr(model, "pretrained_cfg", None)
    return save_native_arrays(state_dict(model), config, path, spec)


def load_weights(
    model: CvTImageClassifier | CvTBackbone, path: str | os.PathLike[str], *, check: bool = True
) -> FitReport:
    """Load any supported weight file (native, HF, official ``.pth``, TF-port ``.h5``) into ``model``."""
    loaded = read_arrays(path, check=check)
    return load_state_dict(model, loaded.state_dict, source=loaded.path)

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
from ..core.errors import UsageError
from ..core.files import check_suffix
from ..core.layouts import to_torch
from ..core.loading import FitReport, Slot, match
from ..core.presets import default_spec, get_config
from ..core.spec import PretrainedSpec
from ..core.weights import LoadedArrays, read_arrays, resolve, save_native_arrays, with_overrides
from .backbone import CvTBackbone
from .classifier import CvTImageClassifier
from .layers import skip_init
from .preprocessor import CvTImagePreprocessor

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
        dtype = keras.backend.standardize_dtype(var.dtype)
        var.assign(arr if dtype == "bfloat16" else arr.astype(dtype))  # numpy has no bfloat16: Keras casts
    return report


CREATE_KEYWORDS = (
    "num_classes",
    "activation",
    "data_format",
    "classifier_activation",
    "pooling",
    "load_weights",
    "dtype",
)


def config_overrides() -> tuple[str, ...]:
    """The top-level :class:`CvTConfig` fields a caller may override by keyword (``img_size``, ``init`` ...)."""
    import dataclasses

    return tuple(
        f.name for f in dataclasses.fields(CvTConfig) if f.name not in ("stages", "num_classes", "activation", "name")
    )


def check_keywords(where: str, given: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    """One :class:`~cvt.core.errors.UsageError` line for the first keyword of ``given`` not in ``accepted`` (nor a
    config override), listing the accepted ones; not the ``TypeError`` of a dataclass deep inside."""
    allowed = set(accepted) | set(config_overrides())
    unknown = sorted(k for k in given if k not in allowed)
    if unknown:
        raise UsageError(f"{where}: unknown keyword argument {unknown[0]!r} (accepted: {', '.join(sorted(allowed))})")


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
    load_weights: bool = True,
    dtype: Any = None,
    **overrides: Any,
) -> CvTImageClassifier:
    """Build a Keras CvT classifier; the same names, weight sources and rules as :func:`cvt.create_model`.

    Args:
        name: an architecture or checkpoint name (``cvt.core.list_models()``), a :class:`CvTConfig`, or ``None``
            to take the architecture from ``weights``.
        weights: a local weight file or directory in any supported layout (native / HF safetensors, official
            ``.pth`` or HF ``.bin`` (read without torch), the TF port's ``.h5``, a ``cvt.keras`` preset directory),
            or a hub id (``hf://owner/repo[@revision]``).
        pretrained: download the released checkpoint ``name`` from the Hugging Face hub (cached).
        num_classes: head size; ``None`` keeps the file's, another number puts a fresh head on the loaded
            backbone (fine-tuning), ``0`` removes it (pooled features out).
        activation: ``"quick_gelu"`` or ``"gelu"``; default (:mod:`cvt.core.weights`): a native file's record,
            else ``quick_gelu`` for a released checkpoint name, else ``gelu`` for an HF directory, else
            ``quick_gelu`` (official ``.pth``, TF-port ``.h5``, an architecture name alone).
        data_format: ``"channels_last"`` (default: Keras' global setting) or ``"channels_first"``.
        classifier_activation: applied to the logits (``None``: logits; ``"softmax"``: probabilities).
        pooling: ``"token"`` / ``"avg"`` (``None``: the cls token when there is one).
        load_weights: ``False``: the architecture (and spec) only, randomly initialised (keras-hub's keyword);
            nothing is downloaded.
        dtype: a Keras dtype policy name (``"float32"``, ``"bfloat16"``, ``"mixed_bfloat16"`` ...) for every
            layer; ``None``: the global policy. Logits stay float32.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...); any other keyword
            is one :class:`~cvt.core.errors.UsageError` line listing the accepted ones.

    Returns:
        The model (``model.pretrained_cfg``: preprocessing and labels; ``model.preprocessor``: the matching
        :class:`CvTImagePreprocessor`; ``model.load_report``: what loading found, a
        :class:`~cvt.core.loading.FitReport`).
    """
    check_keywords("cvt.keras.create_model", overrides, CREATE_KEYWORDS)
    if pretrained and not load_weights:  # the architecture of a released checkpoint: no download
        if weights is not None:
            raise UsageError("give either pretrained=True or weights=..., not both")
        config = name if isinstance(name, CvTConfig) else get_config(str(name))
        spec, loaded = default_spec(config), None
    else:
        config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained)
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **overrides)
    return build_model(
        config,
        spec,
        loaded if load_weights else None,
        data_format=data_format,
        classifier_activation=classifier_activation,
        pooling=pooling,
        dtype=dtype,
    )


def build_model(
    config: CvTConfig,
    spec: PretrainedSpec | None,
    loaded: LoadedArrays | None = None,
    *,
    data_format: str | None = None,
    classifier_activation: str | None = None,
    pooling: str | None = None,
    dtype: Any = None,
) -> CvTImageClassifier:
    """The classifier for a resolved architecture and spec, with ``loaded``'s weights assigned when given (a
    backbone alone, e.g. a backbone preset, leaves the final norm and head fresh, with a note in the report)."""
    with skip_init() if loaded is not None else contextlib.nullcontext():  # weights overwrite the init
        backbone = CvTBackbone(config, data_format=data_format, dtype=dtype, name="backbone")
    model = CvTImageClassifier(
        backbone,
        activation=classifier_activation,
        pooling=pooling,
        pretrained_cfg=spec,
        preprocessor=CvTImagePreprocessor(spec, backbone.data_format) if spec is not None else None,
        dtype=dtype,
        name=config.name.replace("-", "_"),
    )
    model.load_report = FitReport()
    if loaded is not None:
        if any(k.startswith("stages.") for k in loaded.state_dict) and "norm.weight" not in loaded.state_dict:
            model.load_report = load_state_dict(model.backbone, loaded.state_dict, source=loaded.path)
            model.load_report.notes.append("fresh final norm and head: the weights hold a backbone only")
        else:
            model.load_report = load_state_dict(model, loaded.state_dict, source=loaded.path)
    model.load_notes = model.load_report.notes  # the 0.2 name
    return model


def from_preset(preset: str | os.PathLike[str], load_weights: bool = True, dtype: Any = None, **kwargs: Any):
    """keras-hub's spelling: :func:`cvt.keras.preset.from_preset` (a ``cvt.keras`` preset directory, a registry
    checkpoint name (downloaded once), an architecture name, a weight file or directory, a hub id)."""
    from .preset import from_preset as _from_preset

    return _from_preset(preset, load_weights=load_weights, dtype=dtype, **kwargs)


def save_native(
    model: CvTImageClassifier | CvTBackbone, path: str | os.PathLike[str], spec: PretrainedSpec | None = None
) -> Path:
    """Our native ``.safetensors`` (config and spec in its metadata): loads in PyTorch, Keras and Flax.

    ``path`` must end in ``.safetensors`` (a ``.h5`` / ``.keras`` is Keras' own format: ``model.save_weights``
    / ``model.save``); anything else is one :class:`~cvt.core.errors.WriteError` line, nothing written."""
    check_suffix(path, (".safetensors",), "a native weights file")
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

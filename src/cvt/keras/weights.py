"""Weights for the Keras CvT: native names <-> Keras variables, building models from any weight file, saving.

A variable's native (PyTorch) name is its layer path with the official names; the layout changes are:

=========================  ====================  ==========================================
Keras variable             native leaf           layout (Keras <- PyTorch)
=========================  ====================  ==========================================
``Conv2D.kernel``          ``weight``            ``HWIO <- OIHW``: ``transpose(2, 3, 1, 0)``
``DepthwiseConv2D.kernel`` ``weight``            ``(k, k, C, 1) <- (C, 1, k, k)``: ``transpose(2, 3, 0, 1)``
``Dense.kernel``           ``weight``            ``(in, out) <- (out, in)``: transpose
``gamma`` / ``beta``       ``weight`` / ``bias``  none (LayerNorm and BatchNorm)
``moving_mean/variance``   ``running_mean/var``  none
=========================  ====================  ==========================================

Files are read by :func:`cvt.core.weights.read_arrays` / :func:`~cvt.core.weights.resolve` into numpy: native
and HF safetensors without torch; official ``.pth`` and HF ``.bin`` when torch is importable (else one line
saying how to convert); the TF port's ``.h5`` (:mod:`cvt.core.tfport`). Loading refuses missing, unexpected or
mis-shaped tensors in one :class:`~cvt.core.errors.WeightsError` (a head with another class count is a new head
for fine-tuning, as in PyTorch). Saving writes our native safetensors (the same file loads in PyTorch and Flax)
or Keras' own ``.weights.h5`` / ``.keras``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core.config import CvTConfig
from ..core.errors import WeightsError
from ..core.spec import PretrainedSpec
from ..core.weights import PickleReader, resolve, save_native_arrays, with_overrides
from .backbone import CvTBackbone
from .classifier import CvTImageClassifier
from .layers import skip_init

OPTIONAL = ("num_batches_tracked",)  # not every exporter keeps it; it never changes a forward pass

# layout kind -> (PyTorch -> Keras, Keras -> PyTorch)
_LAYOUTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "conv": (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    "depthwise": (lambda a: a.transpose(2, 3, 0, 1), lambda a: a.transpose(2, 3, 0, 1)),
    "dense": (lambda a: a.T, lambda a: a.T),
    "same": (lambda a: a, lambda a: a),
}
_NORM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _norm_vars(layer: Any, prefix: str) -> Iterator[tuple[str, Any, str]]:
    for v in layer.weights:
        leaf = v.path.rsplit("/", 1)[-1]
        yield prefix + _NORM.get(leaf, leaf), v, "same"


def _linear_vars(layer: Any, prefix: str, kind: str = "dense") -> Iterator[tuple[str, Any, str]]:
    yield prefix + "weight", layer.kernel, kind
    if layer.use_bias:
        yield prefix + "bias", layer.bias, "same"


def native_variables(model: CvTBackbone | CvTImageClassifier) -> dict[str, tuple[Any, str]]:
    """``{native name: (Keras variable, layout kind)}`` for every variable of a backbone or classifier."""
    backbone = model.backbone if isinstance(model, CvTImageClassifier) else model
    out: list[tuple[str, Any, str]] = []
    for i, stage in enumerate(backbone.stages):
        p = f"stages.{i}."
        out += _linear_vars(stage.patch_embed.proj, p + "patch_embed.proj.", "conv")
        out += _norm_vars(stage.patch_embed.norm, p + "patch_embed.norm.")
        if stage.cls_token is not None:
            out.append((p + "cls_token", stage.cls_token, "same"))
        for j, blk in enumerate(stage.blocks):
            b = f"{p}blocks.{j}."
            out += _norm_vars(blk.norm1, b + "norm1.")
            for n in ("q", "k", "v"):
                proj = getattr(blk.attn, f"conv_proj_{n}")
                if proj.method == "dw_bn":
                    out.append((f"{b}attn.conv_proj_{n}.conv.weight", proj.conv.kernel, "depthwise"))
                    out += _norm_vars(proj.bn, f"{b}attn.conv_proj_{n}.bn.")
                out += _linear_vars(getattr(blk.attn, f"proj_{n}"), f"{b}attn.proj_{n}.")
            out += _linear_vars(blk.attn.proj, b + "attn.proj.")
            out += _norm_vars(blk.norm2, b + "norm2.")
            out += _linear_vars(blk.mlp.fc1, b + "mlp.fc1.")
            out += _linear_vars(blk.mlp.fc2, b + "mlp.fc2.")
    if isinstance(model, CvTImageClassifier):
        out += _norm_vars(model.norm, "norm.")
        if model.head is not None:
            out += _linear_vars(model.head, "head.")
    return {name: (var, kind) for name, var, kind in out}


def state_dict(model: CvTBackbone | CvTImageClassifier) -> dict[str, np.ndarray]:
    """The model's weights as numpy under the native names and PyTorch layouts (what :func:`save_native` writes)."""
    out = {}
    for name, (var, kind) in native_variables(model).items():
        arr = np.asarray(keras.ops.convert_to_numpy(var))
        if name.endswith("num_batches_tracked"):
            arr = arr.astype(np.int64)  # PyTorch's dtype
        out[name] = np.array(_LAYOUTS[kind][1](arr), order="C")  # NOTE: ascontiguousarray makes 0-d 1-d
    return out


def load_state_dict(
    model: CvTBackbone | CvTImageClassifier, sd: Mapping[str, Any], source: object = "state dict"
) -> list[str]:
    """Assign a native numpy state dict to ``model``; returns notes (a new or dropped head).

    Raises :class:`WeightsError` counting missing, unexpected and mis-shaped tensors and naming the first of
    each (one short line; :func:`create_model` checks a file against the architecture before building anything).
    A backbone ignores the file's ``norm.`` / ``head.`` tensors; a head of another class count stays fresh.
    """
    targets = native_variables(model)
    sd = {k: v for k, v in sd.items() if not (isinstance(model, CvTBackbone) and k.split(".")[0] in ("norm", "head"))}
    notes = []
    head = targets.get("head.weight")
    if "head.weight" in sd and (head is None or tuple(sd["head.weight"].shape) != tuple(head[0].shape)[::-1]):
        notes.append(
            "head dropped: model has num_classes=0"
            if head is None
            else f"new head: file has {sd['head.weight'].shape[0]} classes, model {head[0].shape[1]}"
        )
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        targets = {k: v for k, v in targets.items() if not k.startswith("head.")}
    missing = [k for k in targets if k not in sd and k.rsplit(".", 1)[-1] not in OPTIONAL]
    unexpected = [k for k in sd if k not in targets]
    mismatched = []
    values = {}
    for name, (var, kind) in targets.items():
        if name not in sd:
            continue
        arr = _LAYOUTS[kind][0](np.asarray(sd[name]))
        if tuple(arr.shape) != tuple(var.shape):
            own = _LAYOUTS[kind][1](np.empty(var.shape, np.int8)).shape  # the model's shape in PyTorch layout
            mismatched.append(f"{name}: file {tuple(np.shape(sd[name]))} vs model {tuple(own)}")
        values[name] = arr
    problems = [  # counts and the first name: one short line however far off the file is
        f"{len(names)} {label} (first: {names[0]})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
        if names
    ]
    if problems:
        raise WeightsError(f"{source}: weights do not fit this architecture: {'; '.join(problems)}")
    for name, arr in values.items():
        var = targets[name][0]
        var.assign(arr.astype(keras.backend.standardize_dtype(var.dtype)))
    return notes


def _pickle_reader() -> PickleReader | None:
    """PyTorch's safe pickle reader when torch is importable (official ``.pth``, HF ``.bin``), else ``None``."""
    try:
        from ..torch.weights import load_pickle
    except ImportError:
        return None
    return load_pickle


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
            ``.pth`` or HF ``.bin`` with torch installed, the TF port's ``.h5``).
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
        The model (``model.pretrained_cfg``: preprocessing and labels; ``model.load_notes``: what loading noted).
    """
    config, spec, loaded = resolve(name, weights=weights, pretrained=pretrained, read_pickle=_pickle_reader())
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
    model.load_notes = []
    if loaded is not None:
        model.load_notes = load_state_dict(model, loaded.state_dict, source=loaded.path)
    return model


def from_preset(preset: str, **kwargs: Any) -> CvTImageClassifier:
    """keras-hub's spelling: a registry checkpoint name (downloaded once, e.g. ``"cvt-13-384-22k"``), an
    architecture name (random weights), or a local weight file / directory."""
    from ..core.presets import get_checkpoint

    if get_checkpoint(preset) is not None:
        return create_model(preset, pretrained=True, **kwargs)
    if Path(preset).exists():
        return create_model(weights=preset, **kwargs)
    return create_model(preset, **kwargs)


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
) -> list[str]:
    """Load any supported weight file (native, HF, official with torch, TF-port ``.h5``) into ``model``."""
    from ..core.weights import read_arrays

    loaded = read_arrays(path, read_pickle=_pickle_reader(), check=check)
    return load_state_dict(model, loaded.state_dict, source=loaded.path)

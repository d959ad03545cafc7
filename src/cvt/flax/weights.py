"""Weights for the Flax CvT: native names <-> NNX state, building from files, saving.

A parameter's NNX path is its native (PyTorch) name up to the leaf and the layout:

=====================  ==================  =====================================
NNX leaf               native leaf         layout change (JAX <- PyTorch)
=====================  ==================  =====================================
``kernel`` (2-d)       ``weight``          ``(in, out) <- (out, in)``: transpose
``kernel`` (4-d)       ``weight``          ``HWIO <- OIHW`` (depthwise ``(k, k, 1, C) <- (C, 1, k, k)``)
``scale`` (LayerNorm)  ``weight``          none
anything else          same name           none (BatchNorm keeps PyTorch's names)
=====================  ==================  =====================================

Loading builds the model abstractly (``nnx.eval_shape``: no random init, no memory for it), fills every
parameter and BatchNorm statistic from the file's arrays, and refuses a file with missing, unexpected or
mis-shaped tensors in one error (the core's one protocol, :mod:`cvt.core.loading`). Files are read by
:func:`cvt.core.weights.read_arrays` into numpy, without torch (native and HF safetensors, ``.pth`` / ``.bin``,
the TF port's ``.h5``). Saving writes our native safetensors: the same file loads in PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..core.config import CvTConfig
from ..core.files import check_suffix
from ..core.layouts import kind_of_kernel, to_torch
from ..core.loading import FitReport, Slot, head_classes, match
from ..core.spec import PretrainedSpec
from ..core.weights import LoadedArrays, read_arrays, resolve, save_native_arrays, with_overrides
from .model import CvT


def native_name(path: tuple[Any, ...], ndim: int) -> str:
    """The native key of an NNX state path: ``('stages', 0, 'patch_embed', 'proj', 'kernel')`` ->
    ``stages.0.patch_embed.proj.weight``."""
    *parents, leaf = (str(p) for p in path)
    if leaf == "kernel" or (leaf == "scale" and ndim == 1):
        leaf = "weight"
    return ".".join([*parents, leaf])


def _layout(path: tuple[Any, ...], ndim: int) -> str:
    """The layout kind (:mod:`cvt.core.layouts`) of an NNX leaf: kernels by rank (the depthwise conv is a grouped
    HWIO kernel, ``conv``), everything else as PyTorch holds it."""
    return kind_of_kernel(ndim) if str(path[-1]) == "kernel" else "same"


def _weight_leaves(state: nnx.State) -> list[tuple[tuple[Any, ...], nnx.Variable]]:
    """``(path, variable)`` of every parameter and BatchNorm statistic (not the dropout RNG state)."""
    return [(p, v) for p, v in nnx.to_flat_state(state) if isinstance(v, (nnx.Param, nnx.BatchStat))]


def state_dict(model: CvT) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as numpy, native names and PyTorch layouts."""
    out = {}
    for path, var in _weight_leaves(nnx.state(model)):
        value = np.asarray(jax.device_get(var[...]))
        if path[-1] == "num_batches_tracked":
            value = value.astype(np.int64)  # PyTorch's dtype for the counter
        out[native_name(path, value.ndim)] = to_torch(_layout(path, value.ndim), value)
    return out


def _fill(state: nnx.State, sd: Mapping[str, Any], source: object) -> FitReport:
    """Put ``sd`` (native names/layouts) into the abstract ``state`` in place, by the core's one protocol
    (:func:`cvt.core.loading.match`: one error line for tensors that do not fit)."""
    leaves = {}
    for path, var in _weight_leaves(state):
        shape = tuple(var.get_value().shape)
        leaves[native_name(path, len(shape))] = (var, Slot(shape, _layout(path, len(shape))))
    values, report = match({name: slot for name, (_, slot) in leaves.items()}, sd, source=source)
    for name, (var, slot) in leaves.items():
        abstract = var.get_value()
        # NOTE: a copy: on CPU jnp.asarray may alias the numpy buffer, which the caller may still change (a torch
        # tensor's .numpy() view, say). An absent optional tensor (the batch counter) starts at 0.
        value = values[name] if name in values else np.zeros(slot.shape, abstract.dtype)
        var.set_value(jnp.array(value, dtype=abstract.dtype, copy=True))
    return report


def from_state_dict(config: CvTConfig, sd: Mapping[str, Any], *, seed: int = 0, source: object = "weights") -> CvT:
    """A :class:`CvT` of ``config`` holding ``sd`` (native names, PyTorch layouts, numpy or any array).

    Built abstractly (``nnx.eval_shape``) and filled: no random initialisation is computed. The dropout RNG
    streams are seeded from ``seed``. The model is returned as built (training mode).
    """
    abstract = nnx.eval_shape(lambda: CvT(config, rngs=nnx.Rngs(params=0, dropout=0)))
    graphdef, state = nnx.split(abstract)
    _fill(state, sd, source)
    model = nnx.merge(graphdef, state)
    nnx.reseed(model, dropout=seed)  # the RNG keys were abstract too
    return model


def read_weights(path: str | os.PathLike[str]) -> LoadedArrays:
    """Any weight file the core reads, as numpy in the native layout (``.pth`` / ``.bin`` too, without torch)."""
    return read_arrays(path)


def create_model(
    name_or_config: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    activation: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> CvT:
    """Build a Flax :class:`CvT` in eval mode: the same resolution rule as :func:`cvt.create_model`.

    With ``weights`` (or ``pretrained``) no initialiser runs: the model is built abstractly and filled from the
    file (:func:`from_state_dict`); only a new head of another size is initialised. Run it through
    :func:`cvt.flax.jit_forward`: eager NNX calls are many times slower.

    Args:
        name_or_config: an architecture or checkpoint name (``cvt-13``, ``cvt-13-384`` ...) or a config;
            ``None`` when ``weights`` describe themselves (native files, HF directories).
        weights: a weight file or directory (native / HF safetensors, ``.pth`` / ``.bin`` with torch).
        pretrained: download the released checkpoint of that name (needs network once).
        num_classes: a new, freshly initialised head of that size (``0``: pooled features out).
        activation: ``"quick_gelu"`` or ``"gelu"``; default: the rule of :mod:`cvt.core.weights` (as PyTorch).
        seed: parameter init (random models, new heads) and dropout streams.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).
    """
    config, spec, loaded = resolve(name_or_config, weights=weights, pretrained=pretrained)
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **overrides)
    if loaded is None:
        # NOTE: eager NNX init compiles each initialiser on its own (~10 s for cvt-tiny on 2 CPU cores);
        # jit-compiling the whole constructor measured slower still (one large RNG program).
        model = CvT(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    else:  # the file's head as it is, then a fresh one if another class count was asked for
        file_config = config.replace(num_classes=head_classes(loaded.state_dict))
        model = from_state_dict(file_config, loaded.state_dict, seed=seed + 1, source=loaded.path)
        if config.num_classes != file_config.num_classes:
            model.reset_classifier(config.num_classes, rngs=nnx.Rngs(params=seed))
    model.pretrained_cfg = spec
    model.eval()
    return model


def from_pretrained(name: str, **kwargs: Any) -> CvT:
    """A released checkpoint by name (``cvt-13``, ``cvt-21-384-22k`` ...), downloaded once, in eval mode."""
    return create_model(name, pretrained=True, **kwargs)


def save(model: CvT, path: str | os.PathLike[str], spec: PretrainedSpec | None = None) -> Path:
    """Write our native safetensors (config and spec in its metadata): it loads in PyTorch and JAX alike.

    ``path`` must end in ``.safetensors`` (anything else: one :class:`~cvt.core.errors.WriteError` line)."""
    check_suffix(path, (".safetensors",), "a native weights file")
    return save_native_arrays(state_dict(model), model.config, path, spec or model.pretrained_cfg)

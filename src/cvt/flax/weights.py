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
mis-shaped tensors in one error naming them. Files are read by :func:`cvt.core.weights.read_arrays` (native
and HF safetensors in numpy, no torch; ``.pth`` / ``.bin`` when torch is importable; whatever other
readers the core dispatches to). Saving writes our native safetensors: the same file loads in PyTorch.
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
from ..core.errors import WeightsError
from ..core.spec import PretrainedSpec
from ..core.weights import LoadedArrays, read_arrays, resolve, save_native_arrays
from .model import CvT

OPTIONAL = ("num_batches_tracked",)  # not every exporter keeps it; it never changes a forward pass


def native_name(path: tuple[Any, ...], ndim: int) -> str:
    """The native key of an NNX state path: ``('stages', 0, 'patch_embed', 'proj', 'kernel')`` ->
    ``stages.0.patch_embed.proj.weight``."""
    *parents, leaf = (str(p) for p in path)
    if leaf == "kernel" or (leaf == "scale" and ndim == 1):
        leaf = "weight"
    return ".".join([*parents, leaf])


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """A JAX kernel in PyTorch's layout: Dense ``(in, out) -> (out, in)``, conv ``HWIO -> OIHW``."""
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value


def from_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """Inverse of :func:`to_torch_layout` for a ``kernel`` leaf; other leaves are unchanged."""
    if leaf != "kernel":
        return value
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


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
        out[native_name(path, value.ndim)] = to_torch_layout(value) if path[-1] == "kernel" else value
    return out


def _fill(state: nnx.State, sd: Mapping[str, Any], source: object) -> None:
    """Put ``sd`` (native names/layouts) into the abstract ``state`` in place; one error lists every problem."""
    missing, bad_shape, used = [], [], set()
    for path, var in _weight_leaves(state):
        abstract = var.get_value()
        key = native_name(path, len(abstract.shape))
        if key not in sd:
            if path[-1] in OPTIONAL:
                var.set_value(jnp.zeros(abstract.shape, abstract.dtype))
            else:
                missing.append(key)
            continue
        used.add(key)
        value = from_torch_layout(np.asarray(sd[key]), str(path[-1]))
        if value.shape != tuple(abstract.shape):
            bad_shape.append(f"{key} {tuple(value.shape)} (model {tuple(abstract.shape)})")
            continue
        # NOTE: a copy: on CPU jnp.asarray may alias the numpy buffer, which the caller may still change
        # (a torch tensor's .numpy() view, say).
        var.set_value(jnp.array(value, dtype=abstract.dtype, copy=True))
    unexpected = sorted(set(sd) - used)
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the model ({'; '.join(problems)})")


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


def torch_pickle_reader() -> Any:
    """PyTorch's safe pickle reader (:func:`cvt.torch.weights.load_pickle`: ``weights_only``, code refused) when torch
    is importable, else ``None`` (the core then says how to convert the file)."""
    try:
        from ..torch.weights import load_pickle
    except ImportError:
        return None
    return load_pickle


def read_weights(path: str | os.PathLike[str]) -> LoadedArrays:
    """Any weight file the core reads, as numpy in the native layout (``.pth`` only with torch installed)."""
    return read_arrays(path, read_pickle=torch_pickle_reader())


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

    Args:
        name_or_config: an architecture or checkpoint name (``cvt-13``, ``cvt-13-384`` ...) or a config;
            ``None`` when ``weights`` describe themselves (native files, HF directories).
        weights: a weight file or directory (native / HF safetensors, ``.pth`` / ``.bin`` with torch).
        pretrained: download the released checkpoint of that name (needs network once).
        num_classes: a new, freshly initialised head of that size (``0``: pooled features out).
        activation: override the config's (``"gelu"`` for HF's numerics).
        seed: parameter init (random models, new heads) and dropout streams.
        **overrides: other top-level :class:`CvTConfig` fields (``img_size``, ``init``, ...).
    """
    config, spec, loaded = resolve(
        name_or_config, weights=weights, pretrained=pretrained, read_pickle=torch_pickle_reader()
    )
    if activation is not None:
        overrides["activation"] = activation
    if overrides:
        config = config.replace(**overrides)
    if loaded is None:
        # NOTE: eager NNX init compiles each initialiser on its own (~10 s for cvt-tiny on 2 CPU cores);
        # jit-compiling the whole constructor measured slower still (one large RNG program).
        model = CvT(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    else:
        sd = loaded.state_dict
        file_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        model = from_state_dict(config.replace(num_classes=file_classes), sd, seed=seed + 1, source=loaded.path)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes, rngs=nnx.Rngs(params=seed))
    if isinstance(spec.labels, tuple) and len(spec.labels) != model.num_classes:
        spec = spec.replace(labels=None)  # a new head: the file's names no longer apply
    model.pretrained_cfg = spec
    model.eval()
    return model


def from_pretrained(name: str, **kwargs: Any) -> CvT:
    """A released checkpoint by name (``cvt-13``, ``cvt-21-384-22k`` ...), downloaded once, in eval mode."""
    return create_model(name, pretrained=True, **kwargs)


def save(model: CvT, path: str | os.PathLike[str], spec: PretrainedSpec | None = None) -> Path:
    """Write our native safetensors (config and spec in its metadata): it loads in PyTorch and JAX alike."""
    return save_native_arrays(state_dict(model), model.config, path, spec or model.pretrained_cfg)

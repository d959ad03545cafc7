"""Reading the TF port's weight files: ``cvt-tensorflow``'s ``model.save_weights("x.h5")`` -> official-layout numpy.

The port (``cvt_tensorflow``, TF 2.9, tf-keras) saved HDF5 with one top-level group per layer (``stage0``,
``stage1``, ``stage2``, ``norm``, ``head``) and each dataset under the layer name twice, e.g.
``stage2/stage2/blocks/9/attn/conv_proj_k/bn/moving_mean:0`` or ``stage2/stage2/patch_embed/proj/conv2d_11/kernel:0``.
Every segment is the official PyTorch name except ``conv2d_N`` (an automatic Keras name that depends on build
order: dropped). Leaves and layouts (PyTorch <- port):

=======================  ====================  =====================================================
port leaf                official leaf         layout
=======================  ====================  =====================================================
``kernel`` (4-d)         ``weight``            ``OIHW <- HWIO``: ``transpose(3, 2, 0, 1)`` (the depthwise
                                               ``(k, k, 1, C)`` becomes ``(C, 1, k, k)`` by the same rule)
``kernel`` (2-d)         ``weight``            ``(out, in) <- (in, out)``: transpose
``bias``                 ``bias``              none
``gamma`` / ``beta``     ``weight`` / ``bias``  none (LayerNorm and BatchNorm)
``moving_mean/variance`` ``running_mean/var``  none
``cls_token``            ``cls_token``         none, ``(1, 1, C)``
=======================  ====================  =====================================================

Each BatchNorm also gets ``num_batches_tracked = 0`` (Keras keeps no batch count; PyTorch's value for a fresh
layer), so the state dict is complete for a strict PyTorch load.

:func:`read_h5` returns the official names (``stage2.blocks.9.attn.conv_proj_k.bn.running_mean``); the core's key
rules then give the native ones. A file that is not HDF5, is truncated, or is some other model's (or Keras 3's
``.weights.h5``, a ``layers/<name>/vars/<n>`` tree) raises one :class:`WeightsError` line. h5py is imported
only here, when such a file is read. Framework-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import bounds
from .errors import WeightsError, first_line, require, shorten
from .layouts import kind_of_kernel, to_torch

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_AUTO_NAME = re.compile(r"^(conv2d|depthwise_conv2d)(_\d+)?$")  # build-order Keras names, not part of the path
_TOP = re.compile(r"^(stage\d+|norm|head)$")
_LEAVES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "cls_token": "cls_token",
}


def is_hdf5(head: bytes) -> bool:
    """True for the first bytes of an HDF5 file (``.h5``, ``.weights.h5``, ``.keras`` is a zip, not this)."""
    return head.startswith(HDF5_SIGNATURE)


def official_name(dataset: str) -> tuple[str, str]:
    """``(official name, port leaf)`` for a dataset path of the port's file (module docstring).

    Raises ``KeyError`` for a path that is not part of a port CvT.
    """
    parts = dataset.strip("/").split("/")
    top, rest = parts[0], parts[1:]
    if not _TOP.match(top) or not rest:
        raise KeyError(dataset)
    if rest[0] == top:  # tf-keras repeats the layer name
        rest = rest[1:]
    *inner, leaf = [p for p in rest if not _AUTO_NAME.match(p)]
    leaf = leaf.split(":")[0]
    if leaf not in _LEAVES:
        raise KeyError(dataset)
    return ".".join([top, *inner, _LEAVES[leaf]]), leaf


def _datasets(f: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    f.visititems(lambda name, obj: found.append((name, obj)) if hasattr(obj, "shape") else None)
    return found


def check_h5(f: Any, path: Path, kinds: str = "f") -> None:
    """Refuse (one :class:`WeightsError` line) an open HDF5 file whose datasets :mod:`.bounds` does not allow,
    from their declared shapes and dtypes alone, before any dataset is read: too many, one of too many elements,
    a dtype whose ``numpy`` kind is not in ``kinds`` (weights are floating point), or more declared bytes than the
    file can hold (:data:`~cvt.core.bounds.HDF5_EXPANSION`: a 3 KB file declaring a (30000, 30000) dataset)."""
    datasets = _datasets(f)
    bounds.check(len(datasets), bounds.TENSORS, f"{path}: number of datasets", WeightsError)
    declared = 0
    for name, ds in datasets:
        what = f"{path}: dataset {shorten(name)}"
        n = bounds.check_tensor(tuple(int(d) for d in ds.shape), what, WeightsError)
        if ds.dtype.kind not in kinds:
            raise WeightsError(f"{what}: dtype {ds.dtype} is not a weight's")
        declared += n * ds.dtype.itemsize
    stored = path.stat().st_size
    if declared > bounds.HDF5_EXPANSION * stored + 2**20:
        raise WeightsError(
            f"{path}: its datasets declare {declared} bytes, far more than the file's {stored} (a bomb or no data)"
        )


def read_h5(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The port's ``.h5`` as ``{official name: numpy array in PyTorch layout}`` (module docstring)."""
    require("h5py", "keras", "reading a cvt-tensorflow .h5 file")
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            top = sorted(f.keys())
            if "layers" in top or "vars" in top:
                raise WeightsError(
                    f"{path}: a Keras 3 .weights.h5 file, not the TF port's: load it with model.load_weights() "
                    "into the Keras model that saved it, then cvt.keras.save_native() for the other frameworks"
                )
            if not any(_TOP.match(t) for t in top):
                shown = ", ".join(top[:5]) or "nothing"
                raise WeightsError(f"{path}: not a cvt-tensorflow weight file (top-level groups: {shown})")
            check_h5(f, path)  # shapes, dtypes and sizes bounded before anything is read
            out: dict[str, np.ndarray] = {}
            for name, ds in _datasets(f):
                try:
                    key, leaf = official_name(name)
                except KeyError:
                    raise WeightsError(
                        f"{path}: not a cvt-tensorflow weight file (unexpected dataset {name!r})"
                    ) from None
                if key in out:
                    raise WeightsError(f"{path}: two datasets map to {key} (second: {name!r})")
                arr = np.asarray(ds[()])
                out[key] = to_torch(kind_of_kernel(arr.ndim) if leaf == "kernel" else "same", arr)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable HDF5 file, truncated or corrupt ({first_line(e)})") from None
    if not out:
        raise WeightsError(f"{path}: an HDF5 file without weights")
    for key in [k for k in out if k.endswith(".running_mean")]:  # Keras keeps no batch count: PyTorch's fresh 0
        out[key.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
    return out

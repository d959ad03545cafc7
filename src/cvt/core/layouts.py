"""PyTorch <-> channels-last tensor layouts, as data: one table for every reader and front-end.

Native files hold PyTorch layouts. Channels-last frameworks (Keras, Flax, the TF port's ``.h5``) hold some
tensors in another order; each kind is one axis permutation from PyTorch's layout to theirs:

=============  ======================  =========================  ===============================
kind           PyTorch                 channels-last              used by
=============  ======================  =========================  ===============================
``conv``       ``(O, I, kh, kw)``      ``(kh, kw, I, O)`` (HWIO)  Keras / Flax / TF-port convs,
                                                                  Flax's grouped depthwise
``depthwise``  ``(C, 1, kh, kw)``      ``(kh, kw, C, 1)``         Keras ``DepthwiseConv2D``
``dense``      ``(out, in)``           ``(in, out)``              every linear layer
``same``       any                     the same                   biases, norms, statistics, tokens
=============  ======================  =========================  ===============================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# kind -> the permutation that takes a PyTorch-layout array to the channels-last one (None: unchanged)
FROM_TORCH: dict[str, tuple[int, ...] | None] = {
    "conv": (2, 3, 1, 0),
    "depthwise": (2, 3, 0, 1),
    "dense": (1, 0),
    "same": None,
}
KINDS = tuple(FROM_TORCH)


def _perm(kind: str, inverse: bool) -> tuple[int, ...] | None:
    try:
        perm = FROM_TORCH[kind]
    except KeyError:
        raise ValueError(f"unknown layout kind {kind!r} (known: {', '.join(KINDS)})") from None
    return tuple(int(i) for i in np.argsort(perm)) if perm is not None and inverse else perm


def from_torch(kind: str, array: Any) -> np.ndarray:
    """A PyTorch-layout array in the ``kind``'s channels-last layout (C-contiguous)."""
    perm = _perm(kind, inverse=False)
    array = np.asarray(array)
    return array if perm is None else np.ascontiguousarray(array.transpose(perm))


def to_torch(kind: str, array: Any) -> np.ndarray:
    """Inverse of :func:`from_torch` (C-contiguous)."""
    perm = _perm(kind, inverse=True)
    array = np.asarray(array)
    return array if perm is None else np.ascontiguousarray(array.transpose(perm))


def torch_shape(kind: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The PyTorch-layout shape of a tensor of ``kind`` held as ``shape`` (for messages in one vocabulary)."""
    perm = _perm(kind, inverse=True)
    shape = tuple(int(s) for s in shape)
    return shape if perm is None or len(shape) != len(perm) else tuple(shape[i] for i in perm)


def kind_of_kernel(ndim: int) -> str:
    """The kind of a channels-last ``kernel`` by rank: 4-d convolutions (HWIO), 2-d linears, else unchanged."""
    return {4: "conv", 2: "dense"}.get(ndim, "same")

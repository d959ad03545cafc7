"""PyTorch checkpoint files (``.pth``, ``.bin``) read into numpy without torch, allowing tensors and nothing else.

A ``torch.save`` file is a pickle whose tensors point at raw storages by a persistent id. Two layouts exist:

- the zip archive (torch >= 1.6, every file written since): ``<root>/data.pkl`` (the pickle),
  ``<root>/data/<key>`` (one raw storage per key), ``<root>/byteorder`` (``little`` unless it says otherwise);
- the legacy stream (torch < 1.6, or ``_use_new_zipfile_serialization=False``): three small pickles (magic
  number, protocol, system info), the main pickle, a pickle of storage keys, then per key an int64 element count
  and the raw bytes.

The unpickler resolves only the globals a state dict needs (:data:`_ALLOWED`): the tensor and parameter
rebuilders, the typed storage classes, ``OrderedDict``, and ``argparse.Namespace``, the training arguments timm's
``CheckpointSaver`` stores beside the weights (``model_best.pth.tar``: ``state_dict``, ``state_dict_ema``,
``optimizer``, ``args``; timm's own loader allows it the same way). A ``Namespace`` holds attributes only and runs
nothing when built; what it holds passes the same allow-list. Anything else (a class, a function: possibly code) is
refused with the same words as ``torch.load(weights_only=True)``, so a hostile file never runs. Tensor views are
checked against their storage before any byte is read through them. The result equals ``torch.load`` on the same
file (``tests/test_pickles.py`` compares them).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bounds
from .errors import WeightsError, first_line

# torch's typed storage classes -> numpy dtype ("bfloat16" has no numpy dtype: widened to float32 on read)
_STORAGES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
REFUSED = (
    "refused to load: the pickle contains objects other than tensors (possibly code); "
    "only weights_only pickles are accepted"
)
# what to do about it, appended to the refusal
REFUSED_HINT = (
    "if you trust the file, save its state dict alone: "
    "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')"
)


@dataclass(frozen=True)
class _StorageType:
    dtype: Any  # a numpy dtype, or "bfloat16"

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


@dataclass
class _Storage:
    """One storage's elements (1-d numpy, the file's dtype; bfloat16 already widened to float32)."""

    data: np.ndarray


class Refused(Exception):
    """A global outside the allow-list: the file is not a plain state dict."""


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: the view ``(offset, size, stride)`` of ``storage``, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError(f"tensor view size {size}, stride {stride}, offset {offset} is impossible")
    # a stride-0 view of a one-element storage declares any size: bounded before the copy below allocates it
    bounds.check_tensor(size, "tensor view", ValueError)  # (ValueError: read_pickle names the file)
    if 0 in size:
        return np.zeros(size, storage.data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.data.size:
        raise ValueError(f"tensor view reaches element {last} of a storage of {storage.data.size}")
    item = storage.data.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, order="C")


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,  # timm checkpoints' "args" (module docstring)
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType(np.uint8),
}


@dataclass
class _Deferred:
    """A tensor of a legacy file, whose storage bytes come after the pickle: built by :func:`_resolve`."""

    storage: _Storage
    args: tuple


_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; ``deferred``: tensors become :class:`_Deferred` (legacy layout)."""

    def __init__(self, file: Any, load_storage: Any, deferred: bool = False):
        super().__init__(file)
        self._load_storage = load_storage
        self._deferred = deferred
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self._deferred and (module, name) in _REBUILDERS:
            return lambda storage, *args: _Deferred(storage, args)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {str(pid)[:60]}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise Refused(str(storage_type)[:60])
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError("storage views of torch < 1.0 are not supported")
        if key not in self.storages:
            self.storages[key] = self._load_storage(key, storage_type, numel)
        return self.storages[key]


def _elements(raw: bytes, storage_type: _StorageType, big_endian: bool = False) -> np.ndarray:
    if storage_type.dtype == "bfloat16":
        halves = np.frombuffer(raw, ">u2" if big_endian else "<u2").astype(np.uint32)
        return (halves << 16).view(np.float32)
    dtype = np.dtype(storage_type.dtype).newbyteorder(">" if big_endian else "<")
    return np.frombuffer(raw, dtype).astype(np.dtype(storage_type.dtype), copy=False)


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("a zip archive without data.pkl (not a PyTorch checkpoint)")
        root = pkl[: -len("data.pkl")]
        big = root + "byteorder" in names and archive.read(root + "byteorder").strip() == b"big"

        def load_storage(key: str, storage_type: _StorageType, numel: int) -> _Storage:
            info = archive.getinfo(f"{root}data/{key}")  # KeyError: a storage the archive lacks
            if info.file_size != numel * storage_type.itemsize:
                raise ValueError(f"storage {key} holds {info.file_size} bytes, not {numel} elements")
            return _Storage(_elements(archive.read(info), storage_type, big))

        return _Unpickler(io.BytesIO(archive.read(pkl)), load_storage).load()


def _read_legacy(path: Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        kinds: dict[str, _StorageType] = {}

        def defer(key: str, storage_type: _StorageType, numel: int) -> _Storage:
            kinds[key] = storage_type
            return _Storage(np.empty(0, np.uint8))  # its bytes follow the pickles: filled below

        if _Unpickler(f, defer).load() != _LEGACY_MAGIC:
            raise ValueError("invalid magic number (not a PyTorch checkpoint)")
        _Unpickler(f, defer).load()  # protocol version
        _Unpickler(f, defer).load()  # system info (every legacy file in use is little-endian)
        main = _Unpickler(f, defer, deferred=True)
        obj = main.load()
        for key in _Unpickler(f, defer).load():
            key = str(key)
            if key not in main.storages:
                raise ValueError(f"storage {key} is listed but never used")
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * kinds[key].itemsize
            if numel < 0 or f.tell() + nbytes > size:
                raise ValueError(f"storage {key} claims {numel} elements past the end of the file")
            main.storages[key].data = _elements(f.read(nbytes), kinds[key])
    return _resolve(obj)


def _resolve(obj: Any) -> Any:
    """Build a legacy file's deferred tensors, now that their storages are read."""
    if isinstance(obj, _Deferred):
        return _rebuild_tensor(obj.storage, *obj.args)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def read_pickle(path: str | os.PathLike[str]) -> Any:
    """What ``torch.load(path, weights_only=True)`` returns, with numpy arrays for tensors; torch not needed.

    Raises :class:`WeightsError` (one line naming the file) for a pickle that holds anything but tensors and
    containers, and for truncated, corrupt or impossible files.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"  # a zip archive, possibly truncated (then BadZipFile below)
        return _read_zip(path) if zipped else _read_legacy(path)
    except Refused as e:
        raise WeightsError(f"{path}: {REFUSED} (found {e}); {REFUSED_HINT}") from None
    except (zipfile.BadZipFile, EOFError, struct.error) as e:
        raise WeightsError(f"{path}: truncated or corrupt file ({first_line(e) or type(e).__name__})") from None
    except RecursionError:
        raise WeightsError(f"{path}: not a readable PyTorch file (nested too deeply)") from None
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as e:
        raise WeightsError(f"{path}: not a readable PyTorch file ({first_line(e) or type(e).__name__})") from None

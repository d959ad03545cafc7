"""One bounds policy: every size that comes from a file, a recipe or an option is checked here first.

A weight file's metadata, an HF ``config.json``, a training recipe or a command-line option can declare any number;
trusting it before checking it lets a 600-byte file allocate gigabytes (``img_size: 9000``), build a billion blocks
(``depth: 1000000000``) or spawn a hundred thousand processes (``--workers 100000``). Each :class:`Limit` below
names one such size, its range and WHY it is that range (the released models' largest value times a margin, or
what a machine can hold), and :func:`check` refuses a value outside it in one line, before anything is allocated,
built or spawned. Sizes declared by a file are also compared with what the file actually holds (the tensors
present, the bytes stored) by the readers that use these limits.

Framework-free: imports nothing but :mod:`.errors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError, UsageError, shorten


@dataclass(frozen=True)
class Limit:
    """A named range ``[minimum, maximum]`` and the reason for its maximum (said in every refusal)."""

    name: str
    maximum: float
    reason: str
    minimum: float = 1


# ---------------------------------------------------------------------------- architecture (config, metadata)
IMG_SIZE = Limit("img_size", 1024, "attention memory grows with the 4th power of the side; released models use 384")
RESOLUTION = Limit("resolution", 1024, "attention memory grows with the 4th power of the side; released: 224/384")
STAGES = Limit("stages", 8, "released CvTs have 3")
DEPTH = Limit("depth", 64, "blocks per stage; the deepest released stage has 20")
TOTAL_DEPTH = Limit("total depth", 128, "blocks over all stages; the deepest released model has 24")
EMBED_DIM = Limit("embed_dim", 4096, "the widest released stage has 1024")
NUM_HEADS = Limit("num_heads", 256, "the most heads in a released stage is 16")
MLP_RATIO = Limit("mlp_ratio", 16, "released models use 4", minimum=0)
KERNEL = Limit("kernel", 31, "released kernels are 3 and 7")
STRIDE = Limit("stride", 16, "released strides are 1, 2 and 4")
PADDING = Limit("padding", 31, "released paddings are 1 and 2", minimum=0)
NUM_CLASSES = Limit("num_classes", 100_000, "ImageNet-22k has 21841", minimum=0)
IN_CHANS = Limit("in_chans", 64, "images have 1 to 4 channels")

# ---------------------------------------------------------------------------- tensors declared by a file header
TENSOR_ELEMENTS = Limit("tensor elements", 2**27, "the largest CvT tensor (a 22k-class head) has 22M", minimum=0)
TENSOR_DIMS = Limit("tensor dimensions", 8, "CvT tensors have at most 4", minimum=0)
TENSORS = Limit("tensors", 100_000, "a CvT-W24 file has under 1500", minimum=0)
HEADER_BYTES = Limit("header bytes", 100 * 2**20, "safetensors' own limit (a CvT header is under 200 KB)", minimum=0)
# HDF5 weights are written uncompressed by Keras and the TF port: a file declaring far more bytes than it stores
# is a decompression bomb or holds no data at all (HDF5 hands back the fill value for unwritten chunks).
HDF5_EXPANSION = 4  # declared bytes may exceed the file's size by this factor (plus one MiB) at most

# ---------------------------------------------------------------------------- recipes and JSON documents
YAML_NODES = Limit("YAML nodes", 100_000, "a recipe has under 200; aliases must not expand past this", minimum=0)
JSON_DEPTH = Limit("JSON nesting", 64, "configs nest 3 levels deep", minimum=0)
DOCUMENT_BYTES = Limit("bytes", 16 * 2**20, "a recipe or config.json is a few KB", minimum=0)

# ---------------------------------------------------------------------------- options of the verbs
BATCH_SIZE = Limit("batch_size", 8192, "the official ImageNet recipes use a global batch of 2048")
REPEATS = Limit("repeats", 10_000, "timings settle within tens of repeats")
THREADS = Limit("threads", 1024, "more than any machine's cores")


def max_workers() -> int:
    """Worker processes/threads a verb may start: 4 x this machine's CPU count (decoding waits on I/O too)."""
    return 4 * (os.cpu_count() or 1)


def workers_limit() -> Limit:
    return Limit("workers", max_workers(), f"4 x this machine's {os.cpu_count() or 1} CPUs", minimum=0)


def check(value: object, limit: Limit, what: str | None = None, error: type[Exception] = ConfigError) -> int | float:
    """``value`` when it is a number within ``limit``; else ``error`` with one line naming ``what`` (the field, the
    argument or ``file: field``), the limit and its reason. Long values are shortened (:func:`shorten`).

    Booleans are not numbers here (``True`` is no depth).
    """
    what = what or limit.name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what}: must be a number, got {shorten(value)}")
    if not limit.minimum <= value <= limit.maximum:
        span = f"[{_num(limit.minimum)}, {_num(limit.maximum)}]"
        raise error(f"{what}: {shorten(value)} is outside {span} ({limit.reason})")
    return value


def check_tensor(shape: tuple[int, ...], what: str, error: type[Exception]) -> int:
    """The element count of a tensor a file header declares, refused (``error``, naming ``what``) beyond the
    per-tensor limits; nothing is read or allocated to decide."""
    check(len(shape), TENSOR_DIMS, f"{what}: number of dimensions", error)
    n = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise error(f"{what}: impossible shape {shorten(list(shape))}")
        n *= d
    check(n, TENSOR_ELEMENTS, f"{what}: shape {shorten(list(shape))}", error)
    return n


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_options(**options: tuple[object, Limit]) -> None:
    """Each command-line option ``--name value`` within its limit (``None``: not given); a
    :class:`~cvt.core.errors.UsageError` (exit status 2) naming the first that is not, before anything is built,
    loaded or spawned. Keyword names are option names with ``_`` for ``-`` (``batch_size`` -> ``--batch-size``)."""
    for name, (value, limit) in options.items():
        if value is not None:
            check(value, limit, "--" + name.replace("_", "-"), UsageError)

"""Reading any CvT weight file into arrays under the native names, and the one rule that resolves a model.

Read (:func:`read_arrays`): our native ``.safetensors`` (config and spec in its metadata), HF directories
(``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, ``preprocessor_config.json``), bare
``.safetensors`` files, and PyTorch pickles (official ``.pth``, HF ``.bin``) when the caller passes a pickle
reader (only a torch front-end can; the core imports no framework). The layout is detected from the keys and
converted to the native names by :mod:`.keys`. Arrays come back as numpy (``framework="np"``) or as the
framework's own tensors (``framework="pt"`` etc., what ``safetensors.safe_open`` accepts).

Resolve (:func:`resolve`): the architecture is the ``name`` if given, else what the weight file says about itself
(native files and HF directories describe themselves; an official ``.pth`` is recognised by its shapes). The spec
(preprocessing, labels) is our native file's own, else the registry's for a released checkpoint name, else an HF
directory's, else the released checkpoints' rule for the size. Every front-end (PyTorch, Keras, Flax) uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import native, tfport
from .config import CvTConfig, hf_labels
from .errors import ConversionError, WeightsError, first_line
from .files import atomic_write
from .keys import to_native
from .presets import default_spec, get_checkpoint, get_config, infer_config
from .spec import EvalPreprocess, PretrainedSpec

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
PickleReader = Callable[[Path], Any]  # path -> the unpickled object (a state dict, possibly wrapped)


@dataclass
class LoadedArrays:
    """A state dict in native layout plus what the file said about itself."""

    state_dict: dict[str, Any]  # native names and PyTorch layouts (OIHW convs, (out, in) linears)
    source_format: str  # "native" | "official" | "hf" (or another reader's tag, e.g. "tf-port")
    path: Path  # the weight file actually read
    config: CvTConfig | None = None  # from native metadata or an HF config.json, when present
    spec: PretrainedSpec | None = None  # labels / preprocessing the file (or its directory) carries


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside what a checkpoint file holds (plain, ``state_dict``, ``model`` ...)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(_is_array(v) for v in inner.values()):
                return dict(inner)
        arrays = {k: v for k, v in obj.items() if _is_array(v)}
        if arrays and len(arrays) == len(obj):
            return arrays
    raise WeightsError(f"{path}: does not contain a state dict (found {type(obj).__name__})")


def _load_safetensors(path: Path, framework: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file, truncated or corrupt ({first_line(e)})") from None


def read_raw(
    path: Path, *, framework: str = "np", read_pickle: PickleReader | None = None
) -> tuple[dict[str, Any], dict[str, str], Path]:
    """``(arrays under the file's own names, safetensors metadata, weight file)`` for a file or a directory."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return read_raw(path / name, framework=framework, read_pickle=read_pickle)
        raise WeightsError(f"{path}: directory holds none of {', '.join(WEIGHT_FILES)}")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(9)
    if tfport.is_hdf5(head):  # HDF5: the TF port's save_weights file (official names, PyTorch layouts)
        return tfport.read_h5(path), {}, path
    # safetensors: 8-byte little-endian header length, then the JSON header
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        arrays, meta = _load_safetensors(path, framework)
        return arrays, meta, path
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise WeightsError(f"{path}: not a weight file (neither a PyTorch checkpoint nor safetensors)")
    if read_pickle is None:
        raise WeightsError(
            f"{path}: a PyTorch pickle; reading it needs torch (pip install 'cvt-models[torch]'), "
            f"or convert it once where torch is installed: cvt convert {path} model.safetensors --to native"
        )
    return _unwrap(read_pickle(path), path), {}, path


def check_values(state_dict: Mapping[str, Any], source: object) -> None:
    """Refuse weights no model should run: non-finite values anywhere, negative BatchNorm variances.

    Raises :class:`WeightsError` naming the file and the first bad tensor (native name).
    """
    import numpy as np

    for name, value in state_dict.items():
        arr = _float_array(value)
        if arr is None:
            continue
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise WeightsError(f"{source}: tensor {name} holds {bad} non-finite value(s) (NaN or inf)")
        if name.endswith("running_var") and arr.size and float(arr.min()) < 0:
            raise WeightsError(
                f"{source}: tensor {name} has negative values ({float(arr.min()):.3g}): impossible BatchNorm variance"
            )


def _float_array(value: Any) -> Any:
    """A numpy view of a floating-point array or framework tensor; ``None`` for integer ones."""
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor (without importing torch here)
        return value.detach().float().cpu().numpy() if value.is_floating_point() else None
    arr = np.asarray(value)
    return arr if np.issubdtype(arr.dtype, np.floating) else None


def _as_numpy(value: Any) -> Any:
    """numpy for a framework tensor (torch's half floats widened to float32, as numpy has no bfloat16)."""
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def read_arrays(
    path: str | os.PathLike[str],
    *,
    framework: str = "np",
    read_pickle: PickleReader | None = None,
    check: bool = True,
) -> LoadedArrays:
    """Read any supported weight file or directory; its state dict comes back in the native layout.

    ``check``: refuse non-finite values and impossible BatchNorm statistics (:func:`check_values`); turn it off
    only to inspect a broken file.
    """
    tensors, meta, weight_file = read_raw(Path(path), framework=framework, read_pickle=read_pickle)
    try:
        sd, fmt = to_native(tensors)
    except ConversionError as e:
        raise WeightsError(f"{weight_file}: {e}") from None
    if framework == "np":  # a pickle reader hands back framework tensors: numpy, as asked
        sd = {k: _as_numpy(v) for k, v in sd.items()}
    if check:
        check_values(sd, weight_file)
    out = LoadedArrays(sd, fmt, weight_file)
    if native.is_native(meta):
        out.config, out.spec = native.decode_metadata(meta, weight_file)
    config_json = weight_file.parent / "config.json"
    if out.config is None and config_json.is_file():
        try:
            d = json.loads(config_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WeightsError(f"{config_json}: not valid JSON ({first_line(e)})") from None
        if native.is_native(d):
            out.config, out.spec = native.decode_metadata(d, config_json)
        elif d.get("model_type") == "cvt":
            out.config = CvTConfig.from_hf_config(d)
            pre = _hf_preprocess(weight_file.parent, out.config)
            out.spec = PretrainedSpec(preprocess=pre, labels=hf_labels(d), source=str(weight_file.parent))
    return out


def _hf_preprocess(directory: Path, config: CvTConfig) -> EvalPreprocess:
    """An HF directory's ``preprocessor_config.json``, else the released checkpoints' rule for the size."""
    proc = directory / "preprocessor_config.json"
    if not proc.is_file():
        return EvalPreprocess.for_size(config.img_size)
    try:
        return EvalPreprocess.from_hf_processor(json.loads(proc.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{proc}: unusable preprocessing settings ({first_line(e)})") from None


def resolve(
    name: str | CvTConfig | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    framework: str = "np",
    read_pickle: PickleReader | None = None,
    check: bool = True,
) -> tuple[CvTConfig, PretrainedSpec, LoadedArrays | None]:
    """``(architecture, spec, loaded weights or None)`` for a name / config and a weight source (module docstring)."""
    if isinstance(name, CvTConfig):
        config: CvTConfig | None = name
    elif name is not None:
        config = get_config(name)
    else:
        config = None
    if pretrained:
        if weights is not None:
            raise ValueError("give either pretrained=True or weights=..., not both")
        ckpt = get_checkpoint(name) if isinstance(name, str) else None
        if ckpt is None:
            raise ValueError(f"pretrained=True needs a released checkpoint name, got {name!r}")
        from .hub import download_checkpoint

        weights = download_checkpoint(ckpt)
    loaded = None
    if weights is not None:
        loaded = read_arrays(weights, framework=framework, read_pickle=read_pickle, check=check)
    if config is None:
        if loaded is None:
            raise ValueError("a model needs a name, a CvTConfig or weights=")
        config = loaded.config or infer_config(loaded.state_dict)
    file_spec = loaded.spec if loaded is not None else None
    named = isinstance(name, str) and get_checkpoint(name) is not None
    if file_spec is not None and (loaded.source_format == "native" or not named):
        spec = file_spec
    else:
        spec = default_spec(config)
    return config, spec, loaded


def with_overrides(
    config: CvTConfig,
    spec: PretrainedSpec,
    loaded: LoadedArrays | None,
    *,
    num_classes: int | None = None,
    activation: str | None = None,
    **overrides: Any,
) -> tuple[CvTConfig, PretrainedSpec]:
    """The architecture a front-end builds for :func:`resolve`'s result and the caller's changes.

    ``num_classes``: ``None`` keeps the file's head size (0 without a head); another number means a fresh head, and
    then the file's class names no longer describe the outputs, so the spec drops them.
    """
    changes: dict[str, Any] = dict(overrides)
    if activation is not None:
        changes["activation"] = activation
    if loaded is not None:
        file_classes = loaded.state_dict["head.weight"].shape[0] if "head.weight" in loaded.state_dict else 0
        changes.setdefault("num_classes", file_classes if num_classes is None else num_classes)
    elif num_classes is not None:
        changes["num_classes"] = num_classes
    if changes:
        config = config.replace(**changes)
    if isinstance(spec.labels, tuple) and len(spec.labels) != config.num_classes:
        spec = spec.replace(labels=None)
    return config, spec


def save_native_arrays(
    state_dict: Mapping[str, Any], config: CvTConfig, path: str | os.PathLike[str], spec: PretrainedSpec | None = None
) -> Path:
    """Write numpy arrays (native names, PyTorch layouts) as our native ``.safetensors``, atomically."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # NOTE: ascontiguousarray makes 0-d 1-d
    meta = native.encode_metadata(config, spec)
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))

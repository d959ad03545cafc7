"""Reading any CvT weight file into arrays under the native names, and the one rule that resolves a model.

Read (:func:`read_arrays`): our native ``.safetensors`` (config and spec in its metadata), HF directories
(``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, ``preprocessor_config.json``), bare
``.safetensors`` files, PyTorch pickles (official ``.pth``, HF ``.bin``: :mod:`.pickles` reads them without torch,
tensors only) and the TF port's ``.h5``. The layout is detected from the keys and
converted to the native names by :mod:`.keys`. Arrays come back as numpy (``framework="np"``) or as the
framework's own tensors (``framework="pt"`` etc., what ``safetensors.safe_open`` accepts).

Resolve (:func:`resolve`): the architecture is the ``name`` if given, else what the weight file says about itself
(native files and HF directories describe themselves; an official ``.pth`` is recognised by its shapes). The spec
(preprocessing, labels) is our native file's own, else the registry's for a released checkpoint name, else an HF
directory's, else the released checkpoints' rule for the size. Every front-end (PyTorch, Keras, Flax) and every
``cvt`` verb uses it.

The activation (:func:`file_activation`), first rule that applies: an explicit ``activation=`` (``--activation``),
or a whole :class:`~cvt.core.config.CvTConfig` passed as ``name``; a native file's record (what the weights were
made with); ``quick_gelu`` for a released checkpoint name (``cvt-13``, ``cvt-21-384-22k`` ...: what those weights
were trained with, whether downloaded or given with ``weights=``); ``gelu`` for an HF directory (a ``config.json``
of transformers' CvT: the exact GELU transformers computes); else ``quick_gelu`` (an official ``.pth``, the TF
port's ``.h5``, a bare state dict, an architecture name alone: the official numerics).

Fit (:func:`check_fits`, counting with :func:`cvt.core.loading.fit_report`): weights that do not fit the named
architecture are refused before any model is built,
with one line that leads with the two architectures (``holds a cvt-digits model (3 stages, widths 64/128/192,
...), not cvt-13 (...)``) and then only counts the tensors that differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bounds, native, pickles, tfport
from .config import CvTConfig, hf_labels
from .errors import (
    ConfigError,
    ConversionError,
    LabelError,
    UnknownModelError,
    UsageError,
    WeightsError,
    first_line,
    shorten,
)
from .files import atomic_write
from .keys import to_native
from .labels import check_label_count
from .loading import fit_report, head_classes
from .presets import default_spec, get_checkpoint, get_config, infer_config
from .spec import EvalPreprocess, PretrainedSpec

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


@dataclass
class LoadedArrays:
    """A state dict in native layout plus what the file said about itself."""

    state_dict: dict[str, Any]  # native names and PyTorch layouts (OIHW convs, (out, in) linears)
    source_format: str  # "native" | "official" | "hf" (or another reader's tag, e.g. "tf-port")
    path: Path  # the weight file actually read
    config: CvTConfig | None = None  # from native metadata or an HF config.json, when present
    spec: PretrainedSpec | None = None  # labels / preprocessing the file (or its directory) carries
    described_by: str | None = None  # where ``config`` came from: "native" (our metadata) | "hf" (a config.json)


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside what a checkpoint file holds (plain, ``state_dict``, ``model`` ...).

    A training checkpoint (timm's ``CheckpointSaver``: ``state_dict``, ``state_dict_ema``, ``optimizer``, ``args``)
    gives its ``state_dict``, the weights timm's ``validate.py`` evaluates by default; its EMA weights are taken
    on request only (``cvt.timm.clean_checkpoint(src, dst, use_ema=True)``), and an EMA-only file says so.
    """

    def _holds_arrays(inner: Any) -> bool:
        return isinstance(inner, Mapping) and bool(inner) and all(_is_array(v) for v in inner.values())

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if _holds_arrays(obj.get(key)):
                return dict(obj[key])
        arrays = {k: v for k, v in obj.items() if _is_array(v)}
        if arrays and len(arrays) == len(obj):
            return arrays
        ema = next((k for k in ("state_dict_ema", "model_ema") if _holds_arrays(obj.get(k))), None)
        if ema is not None:
            raise WeightsError(
                f"{path}: holds EMA weights only ({ema}); write them out with "
                f"cvt.timm.clean_checkpoint({str(path)!r}, 'weights.safetensors', use_ema=True)"
            )
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise WeightsError(f"{path}: does not contain a state dict (a dict of {keys or 'nothing'})")
    raise WeightsError(f"{path}: does not contain a state dict (found {type(obj).__name__})")


def _load_safetensors(path: Path, framework: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    _check_safetensors_header(path)  # bounded before safetensors maps or allocates anything
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file, truncated or corrupt ({first_line(e)})") from None


def _check_safetensors_header(path: Path) -> None:
    """Read a safetensors file's small JSON header first and refuse (one line) what :mod:`.bounds` does not allow:
    a header longer than the file or than 100 MiB, too many tensors, a tensor of too many elements or one whose
    bytes lie outside the file."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path}: not a valid safetensors file, truncated or corrupt ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, bounds.HEADER_BYTES.maximum):
            raise WeightsError(
                f"{path}: not a valid safetensors file, truncated or corrupt (header of {n} bytes, file of {size})"
            )
        text = f.read(n)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file, corrupt header ({first_line(e)})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a valid safetensors file (header is a JSON {type(header).__name__})")
    bounds.check(len(header), bounds.TENSORS, f"{path}: number of tensors", WeightsError)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list):
            raise WeightsError(f"{path}: tensor {shorten(name)}: header entry without a shape")
        bounds.check_tensor(tuple(shape), f"{path}: tensor {shorten(name)}", WeightsError)
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise WeightsError(f"{path}: tensor {shorten(name)}: header entry without data offsets")
        if offsets[1] > size - 8 - n:  # the tensors actually present: bytes past the end are not
            raise WeightsError(
                f"{path}: not a valid safetensors file, truncated or corrupt (tensor {shorten(name)} ends past the end)"
            )


def read_raw(path: Path, *, framework: str = "np") -> tuple[dict[str, Any], dict[str, str], Path]:
    """``(arrays under the file's own names, safetensors metadata, weight file)`` for a file or a directory.

    A ``cvt.keras`` preset (a directory, or its ``model.weights.h5`` / ``task.weights.h5``) comes back as native
    arrays with native metadata (its config and spec): :mod:`.kerasfile`.
    """
    from . import kerasfile

    preset = path if path.is_dir() and kerasfile.is_preset(path) else kerasfile.preset_dir_of(path)
    if preset is not None:
        arrays, config, spec, weight_file = kerasfile.read_preset(preset)
        return arrays, native.encode_metadata(config, spec), weight_file
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return read_raw(path / name, framework=framework)
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
    return _unwrap(pickles.read_pickle(path), path), {}, path


def check_values(state_dict: Mapping[str, Any], source: object) -> None:
    """Refuse weights no model should run: non-finite values anywhere, negative BatchNorm variances.

    Raises :class:`WeightsError` naming the file and the first bad tensor (native name). Element types are
    :func:`cvt.core.loading.check_dtypes`'s rule (also applied when a front-end assigns the tensors).
    """
    import numpy as np

    from .loading import check_dtypes

    check_dtypes(state_dict, source)
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


def read_arrays(
    path: str | os.PathLike[str],
    *,
    framework: str = "np",
    check: bool = True,
) -> LoadedArrays:
    """Read any supported weight file or directory; its state dict comes back in the native layout.

    ``check``: refuse non-finite values and impossible BatchNorm statistics (:func:`check_values`); turn it off
    only to inspect a broken file.
    """
    tensors, meta, weight_file = read_raw(Path(path), framework=framework)
    try:
        sd, fmt = to_native(tensors)
    except ConversionError as e:
        raise WeightsError(f"{weight_file}: {e}") from None
    check_layout(sd, weight_file)
    out = LoadedArrays(sd, fmt, weight_file)
    if native.is_native(meta):  # the metadata's sizes are bounded and compared with the tensors before any use
        out.config, out.spec = native.decode_metadata(meta, weight_file)
        out.described_by = "native"
    config_json = weight_file.parent / "config.json"
    if out.config is None and config_json.is_file():
        d = read_json_object(config_json)
        if native.is_native(d):
            out.config, out.spec = native.decode_metadata(d, config_json)
            out.described_by = "native"
        elif "model_type" in d:
            if d["model_type"] != "cvt":
                raise WeightsError(f"{config_json}: model_type {shorten(d['model_type'])} is not a CvT ('cvt')")
            try:
                out.config = CvTConfig.from_hf_config(d)
            except ConfigError as e:
                raise WeightsError(f"{config_json}: {e}") from None
            out.described_by = "hf"
            try:
                pre = _hf_preprocess(weight_file.parent, out.config)
            except RecursionError:
                proc = weight_file.parent / "preprocessor_config.json"
                raise WeightsError(f"{proc}: JSON nested too deeply") from None
            bounds.check(pre.img_size, bounds.IMG_SIZE, f"{weight_file.parent}: preprocessing img_size", WeightsError)
            try:
                labels = hf_labels(d)
            except ConfigError as e:
                raise WeightsError(f"{config_json}: {e}") from None
            out.spec = PretrainedSpec(preprocess=pre, labels=labels, source=str(weight_file.parent))
    if out.config is not None:
        check_layout(sd, weight_file, out.config)
    classes = head_classes(sd)
    if out.spec is not None and out.spec.labels is not None and classes:
        try:  # names that describe another head describe none: the --labels rule, not a silent drop
            check_label_count(len(out.spec.labels), classes, f"{weight_file}: its class names")
        except LabelError as e:
            raise WeightsError(str(e)) from None
    if check:
        check_values(sd, weight_file)
    return out


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON config file (HF, native, a Keras preset's) as a dict: one :class:`WeightsError` line naming it for
    anything else (not JSON, a list, nested past the parser's depth, larger than a config could be)."""
    try:
        if path.stat().st_size > bounds.DOCUMENT_BYTES.maximum:
            raise WeightsError(f"{path}: {path.stat().st_size} bytes ({bounds.DOCUMENT_BYTES.reason})")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({first_line(e)})") from None
    except RecursionError:
        raise WeightsError(f"{path}: not a usable config (JSON nested too deeply)") from None
    if not isinstance(d, dict):
        raise WeightsError(f"{path}: expected a JSON object, got a JSON {type(d).__name__}")
    return d


def check_layout(sd: Mapping[str, Any], source: object, config: CvTConfig | None = None) -> None:
    """Stage and block indices in the tensor names within :mod:`.bounds`; with the ``config`` a file declares, the
    same number of stages and of blocks per stage (``depth: 1000000000`` over 3 blocks is refused here, before
    any shape is built per declared block). One :class:`WeightsError` line naming ``source``."""
    blocks: dict[int, int] = {}
    for key in sd:
        parts = key.split(".")
        if parts[0] != "stages" or len(parts) < 3 or not parts[1].isdigit():
            continue
        i = int(parts[1])
        bounds.check(i + 1, bounds.STAGES, f"{source}: tensor {shorten(key)}: stage index", WeightsError)
        blocks.setdefault(i, 0)
        if parts[2] == "blocks" and len(parts) > 3 and parts[3].isdigit():
            j = int(parts[3])
            bounds.check(j + 1, bounds.DEPTH, f"{source}: tensor {shorten(key)}: block index", WeightsError)
            blocks[i] = max(blocks[i], j + 1)
    if config is None or not blocks:
        return
    declared = [s.depth for s in config.stages]
    held = [blocks.get(i, 0) for i in range(max(len(declared), max(blocks) + 1))]
    if declared != held:
        raise WeightsError(
            f"{source}: its config declares {len(declared)} stage(s) of depths {shorten(declared)}, but the file "
            f"holds blocks for depths {shorten(held)}"
        )


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
    check: bool = True,
    strict: bool = True,
) -> tuple[CvTConfig, PretrainedSpec, LoadedArrays | None]:
    """``(architecture, spec, loaded weights or None)`` for a name / config and a weight source (module docstring).

    ``strict``: refuse weights that do not fit the architecture (:func:`check_fits`); off, a front-end may load
    what fits (``cvt.create_model(..., strict=False)``). A hub id, as ``name`` (``hf-hub:owner/repo``) or as
    ``weights`` (``hf://owner/repo[@revision]``), is downloaded (cached) and read like a local directory
    (:func:`resolve_hub`).
    """
    hub_id = hub_request(name, weights)
    if hub_id is not None:
        hub_weights = pretrained and weights is not None  # (a hub id name with pretrained=True: timm's spelling)
        return resolve_hub(hub_id, name, pretrained=hub_weights, framework=framework, check=check, strict=strict)
    refuse_bare_repo(name, weights)
    if isinstance(name, CvTConfig):
        config: CvTConfig | None = name
    elif name is not None:
        config = get_config(name)
    else:
        config = None
    if pretrained:
        if weights is not None:
            raise ValueError("give either pretrained=True or weights=..., not both")
        # a name, or a config made from one (a training recipe's): the released checkpoint of that name
        released = get_checkpoint(config.name) if config is not None else None
        if released is None:
            raise ValueError(f"pretrained=True needs a released checkpoint name, got {name!r}")
        from .hub import download_checkpoint

        weights = download_checkpoint(released)
    loaded = None
    if weights is not None:
        loaded = read_arrays(weights, framework=framework, check=check)
    if config is None:
        if loaded is None:
            raise ValueError("a model needs a name, a CvTConfig or weights=")
        config = loaded.config or infer_config(loaded.state_dict)
    named = isinstance(name, str) and get_checkpoint(name) is not None  # a released checkpoint's name
    if loaded is not None and not isinstance(name, CvTConfig):  # a config given whole keeps its activation
        config = config.replace(activation=file_activation(loaded, released=named))
    if loaded is not None and strict:
        check_fits(config, loaded)
    file_spec = loaded.spec if loaded is not None else None
    if file_spec is not None and (loaded.source_format == "native" or not named):
        spec = file_spec
    else:
        spec = default_spec(config)
    return config, spec, loaded


OFFICIAL_ACTIVATION = "quick_gelu"  # what the released weights were trained with (official .pth, TF-port .h5)


def file_activation(loaded: LoadedArrays, released: bool = False) -> str:
    """The activation weights run with when the caller names none (module docstring): a native file's record;
    ``quick_gelu`` when ``released`` (the caller named a released checkpoint); ``gelu`` for an HF directory; else
    ``quick_gelu``."""
    if loaded.described_by == "native" and loaded.config is not None:
        return loaded.config.activation
    if released:
        return OFFICIAL_ACTIVATION
    return "gelu" if loaded.described_by == "hf" else OFFICIAL_ACTIVATION


# ---------------------------------------------------------------------------- does a file fit an architecture?
def expected_shapes(config: CvTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a native state dict of ``config`` and its shape (PyTorch layouts), in the model's order.

    The schema every front-end's model follows (tested against :class:`cvt.torch.model.CvT`); framework-free, so a
    file can be checked against an architecture before any model is built.
    """
    out: dict[str, tuple[int, ...]] = {}
    c_in = config.in_chans
    for i, s in enumerate(config.stages):
        p, c = f"stages.{i}.", s.embed_dim
        if s.cls_token:
            out[p + "cls_token"] = (1, 1, c)
        out[p + "patch_embed.proj.weight"] = (c, c_in, s.patch_size, s.patch_size)
        out[p + "patch_embed.proj.bias"] = (c,)
        out.update({p + "patch_embed.norm.weight": (c,), p + "patch_embed.norm.bias": (c,)})
        hidden = int(c * s.mlp_ratio)
        for j in range(s.depth):
            b = f"{p}blocks.{j}."
            out.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,)})
            for n, method in (("q", s.q_method), ("k", s.qkv_proj_method), ("v", s.qkv_proj_method)):
                if method == "dw_bn":  # avg / linear projections hold no weights
                    out[f"{b}attn.conv_proj_{n}.conv.weight"] = (c, 1, s.kernel_qkv, s.kernel_qkv)
                    for leaf in ("weight", "bias", "running_mean", "running_var"):
                        out[f"{b}attn.conv_proj_{n}.bn.{leaf}"] = (c,)
                    out[f"{b}attn.conv_proj_{n}.bn.num_batches_tracked"] = ()
            for n in ("q", "k", "v"):
                out[f"{b}attn.proj_{n}.weight"] = (c, c)
                if s.qkv_bias:
                    out[f"{b}attn.proj_{n}.bias"] = (c,)
            out.update({b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,)})
            out.update({b + "norm2.weight": (c,), b + "norm2.bias": (c,)})
            out.update({b + "mlp.fc1.weight": (hidden, c), b + "mlp.fc1.bias": (hidden,)})
            out.update({b + "mlp.fc2.weight": (c, hidden), b + "mlp.fc2.bias": (c,)})
        c_in = c
    out.update({"norm.weight": (config.num_features,), "norm.bias": (config.num_features,)})
    if config.num_classes:
        out.update({"head.weight": (config.num_classes, config.num_features), "head.bias": (config.num_classes,)})
    return out


def describe(config: CvTConfig) -> str:
    """``3 stages, widths 64/192/384, depths 1/2/10, 1000 classes``: what tells architectures apart at a glance."""
    widths = "/".join(str(s.embed_dim) for s in config.stages)
    depths = "/".join(str(s.depth) for s in config.stages)
    n = len(config.stages)
    return f"{n} stage{'s' * (n != 1)}, widths {widths}, depths {depths}, {config.num_classes} classes"


def check_fits(config: CvTConfig, loaded: LoadedArrays) -> None:
    """Refuse (one :class:`WeightsError` line) weights that do not fit ``config``.

    The head is not compared but for its width: a file's head of another class count becomes a new head
    (:func:`with_overrides`). The message leads with both architectures when they differ at a glance
    (:func:`describe`), then counts the tensors that differ and names the first.
    """
    want = expected_shapes(config.replace(num_classes=head_classes(loaded.state_dict)))
    report = fit_report(want, {k: tuple(v.shape) for k, v in loaded.state_dict.items()})
    if report.ok:
        return
    counts, first = report.counts(len(want)), report.first()
    wanted = f"{config.name} ({describe(config)})"
    held = _held(loaded)
    if held is not None and _shape_of(held[1]) != _shape_of(config):
        label, arch = held
        raise WeightsError(f"{loaded.path}: holds a {label} model ({describe(arch)}), not {wanted}: {counts}")
    raise WeightsError(f"{loaded.path}: weights do not fit {wanted}: {counts} (first: {first})")


def _shape_of(config: CvTConfig) -> list[tuple[int, int]]:
    return [(s.embed_dim, s.depth) for s in config.stages]


def _held(loaded: LoadedArrays) -> tuple[str, CvTConfig] | None:
    """``(label, architecture)`` of what a file's tensors make (``cvt-digits``, ``cvt-13-like``, ``custom``);
    ``None`` when the file is too incomplete to describe (the key counts then say what is wrong)."""
    try:
        arch = infer_config(loaded.state_dict)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        return None
    recorded = loaded.config.name if loaded.config is not None and loaded.config.name != "custom" else None
    return recorded or (f"{arch.name}-like" if arch.name != "custom" else "custom"), arch


def hf_incompatibility(config: CvTConfig) -> str | None:
    """Why transformers' ``CvtForImageClassification`` cannot run ``config`` as this library does, or ``None``.

    From transformers' ``modeling_cvt.py``: only ``dw_bn`` projections are built (``avg`` / ``linear`` fail at run
    time); every cls token gets the LAST stage's width; per-block drop-path rates are indexed by the stage, so a
    stage ``i`` needs more than ``i`` blocks to be built at all; LayerNorms use eps 1e-5. (Its exact GELU is a
    numerical difference, not a structural one: the caller decides what to say about a ``quick_gelu`` model.)
    """
    last = config.stages[-1].embed_dim
    for i, s in enumerate(config.stages):
        if s.qkv_proj_method != "dw_bn":
            return f"stage {i} uses {s.qkv_proj_method!r} projections; transformers' CvT builds only 'dw_bn'"
        if s.cls_token and s.embed_dim != last:
            return (
                f"stage {i} has a cls token of width {s.embed_dim}; transformers gives every cls token the last "
                f"stage's width ({last})"
            )
        if s.depth <= i:
            return (
                f"stage {i} has {s.depth} block(s); transformers' CvT indexes drop-path rates by stage and cannot "
                f"build stage {i} with fewer than {i + 1}"
            )
    if config.layer_norm_eps != 1e-5:
        return f"layer_norm_eps is {config.layer_norm_eps}; transformers' CvT always uses 1e-5"
    return None


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
        file_classes = head_classes(loaded.state_dict)
        changes.setdefault("num_classes", file_classes if num_classes is None else num_classes)
    elif num_classes is not None:
        changes["num_classes"] = num_classes
    if changes:
        config = config.replace(**changes)
    spec = spec.for_head(config.num_classes)
    return config, spec


def save_safetensors_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    framework: str = "np",
) -> None:
    """safetensors' ``save_file`` (numpy or torch flavour) with its I/O failures raised as ``OSError``.

    safetensors reports a full disk or a file-size limit as ``SafetensorError(... (os error 27))``: as an ``OSError``
    it reaches :func:`~cvt.core.files.atomic_write`, which names the destination and the reason in one line.
    """
    import re

    from safetensors import SafetensorError

    if framework == "pt":  # asked for only by the torch front-end, which has imported torch already
        from safetensors.torch import save_file
    else:
        from safetensors.numpy import save_file
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1]))) from None


def save_native_arrays(
    state_dict: Mapping[str, Any], config: CvTConfig, path: str | os.PathLike[str], spec: PretrainedSpec | None = None
) -> Path:
    """Write numpy arrays (native names, PyTorch layouts) as our native ``.safetensors``, atomically."""
    import numpy as np

    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # NOTE: ascontiguousarray makes 0-d 1-d
    meta = native.encode_metadata(config, spec)
    return atomic_write(path, lambda tmp: save_safetensors_file(arrays, tmp, meta))


# ---------------------------------------------------------------------------- weights named by a hub id
def hub_request(name: str | CvTConfig | None, weights: str | os.PathLike[str] | None) -> Any:
    """The :class:`~cvt.core.hub.HubId` a caller named (as ``name`` or as ``weights``), else ``None``.

    Raises :class:`~cvt.core.errors.UsageError` when both name a source (a hub id name is itself the weights).
    """
    from .hub import parse_hub_id

    name_id = parse_hub_id(name) if isinstance(name, str) else None
    if name_id is not None and weights is not None:
        raise UsageError(f"{name}: a hub id as the model name is the weights already; do not also give weights=")
    return name_id or (parse_hub_id(weights) if weights is not None else None)


def resolve_hub(
    hub_id: Any, name: str | CvTConfig | None, *, pretrained: bool, framework: str, check: bool, strict: bool
) -> tuple[CvTConfig, PretrainedSpec, LoadedArrays]:
    """:func:`resolve` for weights in a hub repository: downloaded once (:func:`cvt.core.hub.download_repo`), then
    read as a local directory; ``spec.source`` records ``hf://owner/repo@<commit>``.

    A released checkpoint's repository (``hf-hub:microsoft/cvt-13``) means that checkpoint (its name: the registry's
    labels and preprocessing, ``quick_gelu``) unless the caller names an architecture. Errors about the files name
    the hub id and commit instead of the cache path.
    """
    from .hub import download_repo

    if pretrained:
        raise ValueError("give either pretrained=True or weights=..., not both")
    path, commit = download_repo(hub_id)
    if name is None or (isinstance(name, str) and name == hub_id.text):
        name = hub_id.released.name if hub_id.released is not None else None
    folder = path if path.is_dir() else path.parent
    try:
        config, spec, loaded = resolve(name, weights=path, framework=framework, check=check, strict=strict)
    except WeightsError as e:
        raise WeightsError(str(e).replace(str(folder), hub_id.at(commit))) from None
    assert loaded is not None
    return config, spec.replace(source=hub_id.at(commit)), loaded


def refuse_bare_repo(name: str | CvTConfig | None, weights: str | os.PathLike[str] | None) -> None:
    """A bare ``owner/repo`` that is no registry name or local path: refused in one line that says how to write it
    as a hub id (:func:`cvt.core.hub.hub_hint`)."""
    from .hub import hub_hint

    if isinstance(name, str) and get_checkpoint(name) is None:
        hint = hub_hint(name)
        if hint is not None:
            raise UnknownModelError(f"unknown model {name!r}; {hint}")
    hint = hub_hint(weights) if weights is not None else None
    if hint is not None:
        raise WeightsError(f"{weights}: no such file or directory; {hint}")

"""Reading and writing CvT weight files.

Read: official ``.pth`` (plain, or wrapped in ``state_dict`` / ``model``), HF directories (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``), bare ``.safetensors`` / ``.bin`` files, and our own format
(a ``.safetensors`` file whose metadata carries the :class:`~cvt.config.CvTConfig` JSON, optionally in a
directory with ``config.json``). Pickles are only ever opened with ``torch.load(weights_only=True)``.

Write (always atomically: temporary file, fsync, rename): native, HF directory, official ``.pth``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import CvTConfig
from .convert import ConversionError, convert_state_dict, to_native

NATIVE_FORMAT_TAG = "cvt-torch"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


class WeightsError(ValueError):
    """A weight file that cannot be used; the message starts with the path and says what is wrong."""


@dataclass
class LoadedWeights:
    """A state dict in native layout plus what the file said about itself."""

    state_dict: dict[str, torch.Tensor]
    source_format: str  # "native" | "official" | "hf"
    path: Path
    config: CvTConfig | None = None  # from native metadata or an HF config.json, when present
    labels: list[str] | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading
def _load_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise WeightsError(
                f"{path}: refused to load: the pickle contains objects other than tensors "
                "(possibly code); only weights_only pickles are accepted"
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch file ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
        msg = _first_line(e)
        if "zip" in msg.lower() or "central directory" in msg or isinstance(e, EOFError):
            msg = f"truncated or corrupt file ({msg})"
        raise WeightsError(f"{path}: {msg}") from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file, truncated or corrupt ({_first_line(e)})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside what a checkpoint file holds (plain, ``state_dict``, ``model`` ...)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors
    raise WeightsError(f"{path}: does not contain a state dict (found {type(obj).__name__})")


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """``(tensors, safetensors metadata, weight file)`` for a file or a checkpoint directory."""
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return _read_raw(path / name)
        raise WeightsError(f"{path}: directory holds none of {', '.join(_WEIGHT_FILES)}")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then the JSON header
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        tensors, meta = _load_safetensors(path)
        return tensors, meta, path
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise WeightsError(f"{path}: not a weight file (neither a PyTorch checkpoint nor safetensors)")
    return _unwrap(_load_pickle(path), path), {}, path


def read_weights(path: str | os.PathLike[str]) -> LoadedWeights:
    """Read any supported weight file or directory and return its state dict in native layout."""
    path = Path(path)
    tensors, meta, weight_file = _read_raw(path)
    try:
        sd, fmt = to_native(tensors)
    except ConversionError as e:
        raise WeightsError(f"{weight_file}: {e}") from None
    out = LoadedWeights(sd, fmt, weight_file)
    if meta.get("format_tag") == NATIVE_FORMAT_TAG and "config" in meta:
        out.config = CvTConfig.from_json(meta["config"])
        out.labels = list(out.config.extra.get("labels", [])) or None
    config_json = weight_file.parent / "config.json"
    if out.config is None and config_json.is_file():
        try:
            d = json.loads(config_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WeightsError(f"{config_json}: not valid JSON ({_first_line(e)})") from None
        if d.get("format_tag") == NATIVE_FORMAT_TAG:
            out.config = CvTConfig.from_dict(d["config"])
        elif d.get("model_type") == "cvt":
            out.config = CvTConfig.from_hf_config(d)
        if out.config is not None:
            out.labels = list(out.config.extra.get("labels", [])) or None
    return out


def infer_config(sd: Mapping[str, torch.Tensor], base: CvTConfig | None = None) -> CvTConfig:
    """Recover the architecture from a native state dict's shapes.

    Widths, depths, kernels, cls tokens, projection methods and the class count are read off the tensors;
    the number of heads is not stored in weights, so it comes from ``base`` when the widths agree, else
    from a registered architecture with the same widths, else ``width // 64`` (every released CvT uses
    64-wide heads).
    """
    from ..config import StageConfig
    from ..registry import ARCHITECTURES

    stage_ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("stages.")})
    if not stage_ids:
        raise WeightsError("state dict has no stages")
    candidates = ([base] if base is not None else []) + list(ARCHITECTURES.values())
    stages = []
    for i in stage_ids:
        p, b0 = f"stages.{i}.", f"stages.{i}.blocks.0."
        dim, _, kernel, _ = sd[p + "patch_embed.proj.weight"].shape
        observed: dict[str, Any] = dict(
            embed_dim=dim,
            depth=1 + max(int(k.split(".")[3]) for k in sd if k.startswith(p + "blocks.")),
            patch_size=kernel,
            mlp_ratio=sd[b0 + "mlp.fc1.weight"].shape[0] / dim,
            qkv_bias=b0 + "attn.proj_q.bias" in sd,
            cls_token=p + "cls_token" in sd,
        )
        if b0 + "attn.conv_proj_k.conv.weight" in sd:  # avg / linear projections leave no weights
            observed.update(qkv_proj_method="dw_bn", kernel_qkv=sd[b0 + "attn.conv_proj_k.conv.weight"].shape[-1])
        # heads, strides and paddings are not in the weights: take them from an architecture of the same width
        ref = next((c.stages[i] for c in candidates if i < len(c.stages) and c.stages[i].embed_dim == dim), None)
        if ref is not None:
            stages.append(dataclasses.replace(ref, **observed))
        else:
            stem = {"patch_stride": 4, "patch_padding": 2} if kernel == 7 else {}  # the official 7x7 stem
            stages.append(StageConfig(num_heads=max(1, dim // 64), **stem, **observed))
    shape = [(s.embed_dim, s.depth) for s in stages]
    name = next(
        (n for n, a in ARCHITECTURES.items() if [(s.embed_dim, s.depth) for s in a.stages] == shape),
        base.name if base is not None else "custom",
    )
    kwargs: dict[str, Any] = {
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "in_chans": sd[f"stages.{stage_ids[0]}.patch_embed.proj.weight"].shape[1],
        "name": name,
    }
    if base is not None:
        kwargs.update(activation=base.activation, img_size=base.img_size)
    return CvTConfig(stages=tuple(stages), **kwargs)


# ---------------------------------------------------------------------------- loading into a model
@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (a, b) vs model (c, d)"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = []
        for title, items in (
            ("missing in file", self.missing),
            ("not in model", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if items:
                shown = items[:8] + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
                lines.append(f"{len(items)} {title}: " + "; ".join(shown))
        return " | ".join(lines + self.notes) or "all keys matched"


def load_state_dict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True, source: str = "state dict"
) -> LoadReport:
    """Load a native state dict into ``model``, reporting missing, unexpected and mis-shaped keys.

    A head whose class count differs from the model's is left out (the model keeps its fresh head):
    that is fine-tuning, and it is noted in the report rather than treated as an error.
    With ``strict`` any other mismatch raises :class:`WeightsError` carrying the report.
    """
    own = model.state_dict()
    sd = dict(sd)
    report = LoadReport()
    head_w = sd.get("head.weight")
    own_head = own.get("head.weight")
    # same width, other class count: a new head for fine-tuning, not an error
    new_head = head_w is not None and own_head is not None and head_w.shape != own_head.shape
    if new_head and head_w.shape[1:] == own_head.shape[1:]:
        report.notes.append(f"new head: file has {head_w.shape[0]} classes, model {own_head.shape[0]}")
        sd.pop("head.weight")
        sd.pop("head.bias", None)
    if "head.weight" not in own and "head.weight" in sd:  # num_classes=0: drop the file's head
        report.notes.append("head dropped: model has num_classes=0")
        sd.pop("head.weight")
        sd.pop("head.bias", None)
    report.missing = [k for k in own if k not in sd and not k.startswith("head.")]
    report.missing += [k for k in own if k.startswith("head.") and k not in sd and not report.notes]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [  # in model order: the first lines of the report are the first layers
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if strict and not report.ok:
        raise WeightsError(f"{source}: weights do not fit this architecture: {report}")
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    return report


# ---------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then fsync and rename over ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: some writers (torch.export.save) insist on it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _contiguous(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    sd = _contiguous(sd)
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def save_native(sd: Mapping[str, torch.Tensor], config: CvTConfig, path: str | os.PathLike[str]) -> Path:
    """Our format: ``.safetensors`` with the config JSON in its metadata (self-describing, one file).

    If ``path`` does not end in ``.safetensors`` it is a directory that gets ``model.safetensors`` and a
    ``config.json``.
    """
    path = Path(path)
    meta = {"format": "pt", "format_tag": NATIVE_FORMAT_TAG, "config": config.to_json()}
    if path.suffix == ".safetensors":
        return save_safetensors(sd, path, meta)
    save_safetensors(sd, path / "model.safetensors", meta)
    text = json.dumps({"format_tag": NATIVE_FORMAT_TAG, "config": config.to_dict()}, indent=2) + "\n"
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(text))
    return path


def save_hf(
    sd: Mapping[str, torch.Tensor], config: CvTConfig, directory: str | os.PathLike[str],
    labels: list[str] | None = None,
) -> Path:  # fmt: skip
    """An HF directory (``config.json`` + ``model.safetensors``) for ``CvtForImageClassification``."""
    directory = Path(directory)
    hf_sd = convert_state_dict(sd, "native", "hf")
    save_safetensors(hf_sd, directory / "model.safetensors", {"format": "pt"})
    text = json.dumps(config.to_hf_config(labels), indent=2) + "\n"
    atomic_write(directory / "config.json", lambda tmp: tmp.write_text(text))
    return directory


def save_official(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """A plain pickled state dict with the official key names (what ``microsoft/CvT`` loads)."""
    off = _contiguous(convert_state_dict(sd, "native", "official"))
    return atomic_write(path, lambda tmp: torch.save(off, tmp))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__

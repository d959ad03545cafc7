"""Reading and writing CvT weight files.

Read: every layout :mod:`cvt.core.weights` reads (official ``.pth``, HF directories and files, our native
``.safetensors``), as torch tensors; this module adds the pickle reader, which only ever opens files with
``torch.load(weights_only=True)``. Load: :func:`load_state_dict` with a readable report.

Write (always atomically, :func:`cvt.core.files.atomic_write` / ``atomic_write_dir``): native, HF directory,
official ``.pth``.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core import native
from ..core.config import CvTConfig
from ..core.errors import ConversionError, WeightsError, first_line
from ..core.files import atomic_write, atomic_write_dir
from ..core.keys import convert_state_dict
from ..core.spec import PretrainedSpec
from ..core.weights import OPTIONAL_TENSORS, LoadedArrays, hf_incompatibility, read_arrays, save_safetensors_file

LoadedWeights = LoadedArrays  # with torch tensors as values


# ---------------------------------------------------------------------------- reading
def load_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``: a pickle that carries code is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise WeightsError(
                f"{path}: refused to load: the pickle contains objects other than tensors "
                "(possibly code); only weights_only pickles are accepted"
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch file ({first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
        msg = first_line(e)
        if "zip" in msg.lower() or "central directory" in msg or isinstance(e, EOFError):
            msg = f"truncated or corrupt file ({msg})"
        raise WeightsError(f"{path}: {msg}") from None


def read_weights(path: str | os.PathLike[str], check: bool = True) -> LoadedWeights:
    """Read any supported weight file or directory as torch tensors, in native layout (:mod:`cvt.core.weights`).

    ``check``: refuse non-finite values and negative BatchNorm variances (off only to inspect a broken file).
    """
    return as_torch(read_arrays(path, framework="pt", read_pickle=load_pickle, check=check))


def as_torch(loaded: LoadedArrays) -> LoadedWeights:
    """Readers without a torch flavour (the TF port's ``.h5``) hand back numpy arrays: make them tensors."""
    loaded.state_dict = {k: torch.as_tensor(v) for k, v in loaded.state_dict.items()}
    return loaded


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

    def short(self) -> str:
        """Counts and the first name of each kind: what one error line can hold."""
        parts = [
            f"{len(items)} {title} (first: {items[0]})"
            for title, items in (
                ("missing in file", self.missing),
                ("not in model", self.unexpected),
                ("shape mismatch", self.mismatched),
            )
            if items
        ]
        return "; ".join(parts) or "all keys matched"

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
    that is fine-tuning, and it is noted in the report rather than treated as an error. A missing
    ``num_batches_tracked`` is no error (not every writer keeps it; it never changes a forward pass).
    With ``strict`` any other mismatch raises :class:`WeightsError` with the counts (one short line; files are
    checked against the architecture before a model is built, :func:`cvt.core.weights.check_fits`).
    """
    own = model.state_dict()
    sd = dict(sd)
    report = LoadReport()
    head_w = sd.get("head.weight")
    own_head = own.get("head.weight")
    # same width, other class count: a new head for fine-tuning, not an error
    new_head = head_w is not None and own_head is not None and head_w.shape != own_head.shape
    head_changed = False
    if new_head and head_w.shape[1:] == own_head.shape[1:]:
        head_changed = True
        report.notes.append(f"new head: file has {head_w.shape[0]} classes, model {own_head.shape[0]}")
        sd.pop("head.weight")
        sd.pop("head.bias", None)
    if "head.weight" not in own and "head.weight" in sd:  # num_classes=0: drop the file's head
        head_changed = True
        report.notes.append("head dropped: model has num_classes=0")
        sd.pop("head.weight")
        sd.pop("head.bias", None)
    report.missing = [k for k in own if k not in sd and not k.startswith("head.") and not k.endswith(OPTIONAL_TENSORS)]
    report.missing += [k for k in own if k.startswith("head.") and k not in sd and not head_changed]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [  # in model order: the first lines of the report are the first layers
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if strict and not report.ok:
        raise WeightsError(f"{source}: weights do not fit this architecture: {report.short()}")
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    return report


# ---------------------------------------------------------------------------- writing
def _contiguous(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    sd = _contiguous(sd)
    return atomic_write(path, lambda tmp: save_safetensors_file(sd, tmp, metadata, framework="pt"))


def save_native(
    sd: Mapping[str, torch.Tensor], config: CvTConfig, path: str | os.PathLike[str], spec: PretrainedSpec | None = None
) -> Path:
    """Our format: ``.safetensors`` with the config and spec JSON in its metadata (self-describing, one file).

    If ``path`` does not end in ``.safetensors`` it is a directory that gets ``model.safetensors`` and a
    ``config.json`` (published together: :func:`cvt.core.files.atomic_write_dir`).
    """
    path = Path(path)
    meta = native.encode_metadata(config, spec)
    if path.suffix == ".safetensors":
        return save_safetensors(sd, path, meta)
    doc = {"format_tag": native.FORMAT_TAG, "config": config.to_dict()}
    if spec is not None:
        doc["spec"] = spec.to_dict()
    tensors = _contiguous(sd)

    def write(tmp: Path) -> None:
        save_safetensors_file(tensors, tmp / "model.safetensors", meta, framework="pt")
        (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(path, write)


def save_hf(
    sd: Mapping[str, torch.Tensor], config: CvTConfig, directory: str | os.PathLike[str],
    labels: list[str] | None = None,
) -> Path:  # fmt: skip
    """An HF directory (``config.json`` + ``model.safetensors``) for ``CvtForImageClassification``.

    Refuses (:class:`ConversionError`, before writing) a model transformers' CvT cannot build or would compute
    differently in structure (:func:`cvt.core.weights.hf_incompatibility`). transformers always computes exact
    GELU: a ``quick_gelu`` model is written all the same (as the released checkpoints on the hub were), and
    its logits there differ slightly; ``cvt convert`` says so.
    """
    directory = Path(directory)
    problem = hf_incompatibility(config)
    if problem is not None:
        raise ConversionError(f"{directory}: cannot write an HF directory: {problem}")
    hf_sd = _contiguous(convert_state_dict(sd, "native", "hf"))
    hf_config = json.dumps(config.to_hf_config(labels), indent=2) + "\n"

    def write(tmp: Path) -> None:
        save_safetensors_file(hf_sd, tmp / "model.safetensors", {"format": "pt"}, framework="pt")
        (tmp / "config.json").write_text(hf_config, encoding="utf-8")

    return atomic_write_dir(directory, write)


def save_official(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """A plain pickled state dict with the official key names (what ``microsoft/CvT`` loads)."""
    off = _contiguous(convert_state_dict(sd, "native", "official"))
    return atomic_write(path, lambda tmp: torch.save(off, tmp))

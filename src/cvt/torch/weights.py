"""Reading and writing CvT weight files.

Read: every layout :mod:`cvt.core.weights` reads (official ``.pth``, HF directories and files, our native
``.safetensors``), as torch tensors. Load: :func:`load_state_dict`, the core's one protocol
(:mod:`cvt.core.loading`) with the model's ``state_dict`` as its slots.

Write (always atomically, :func:`cvt.core.files.atomic_write` / ``atomic_write_dir``): native, HF directory
(:func:`save_pretrained`: the whole pipeline-ready directory from a model), official ``.pth``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..core import native
from ..core.config import CvTConfig, check_activation
from ..core.errors import ConfigError, ConversionError
from ..core.files import HF_DIR, NATIVE_DIR, atomic_write, atomic_write_dir, check_suffix
from ..core.keys import convert_state_dict
from ..core.labels import LabelSet
from ..core.loading import FitReport, Slot, match
from ..core.modelcard import is_ours, model_card
from ..core.spec import PretrainedSpec
from ..core.weights import LoadedArrays, hf_incompatibility, read_arrays, save_safetensors_file

LoadedWeights = LoadedArrays  # with torch tensors as values


# ---------------------------------------------------------------------------- reading
def read_weights(path: str | os.PathLike[str], check: bool = True) -> LoadedWeights:
    """Read any supported weight file or directory as torch tensors, in native layout (:mod:`cvt.core.weights`).

    ``check``: refuse non-finite values and negative BatchNorm variances (off only to inspect a broken file).
    """
    return as_torch(read_arrays(path, framework="pt", check=check))


def as_torch(loaded: LoadedArrays) -> LoadedWeights:
    """Readers without a torch flavour (pickles, the TF port's ``.h5``) hand back numpy arrays: make them tensors."""
    loaded.state_dict = {k: torch.as_tensor(v) for k, v in loaded.state_dict.items()}
    return loaded


# ---------------------------------------------------------------------------- loading into a model
def load_state_dict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True, source: str = "state dict"
) -> FitReport:
    """Load a native state dict into ``model`` by the core's one protocol (:func:`cvt.core.loading.match`).

    A head of another class count is left fresh (fine-tuning), a model without a head drops the file's: both
    noted in the report. With ``strict`` any other mismatch raises :class:`WeightsError` in one short line;
    without it what fits is loaded and the report says what did not.
    """
    slots = {name: Slot(tuple(value.shape)) for name, value in model.state_dict().items()}
    values, report = match(slots, sd, source=source, strict=strict)
    # NOTE: no copy here: the arrays are views of the file's tensors (or the reader's own arrays), and
    # load_state_dict copies them into the parameters
    model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=False)
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

    If ``path`` has no suffix it is a directory that gets ``model.safetensors`` and a ``config.json`` (published
    together: :func:`cvt.core.files.atomic_write_dir`); another suffix (``x.pth``, ``x.h5``) is refused. An
    existing directory that is not a native one keeps its files, and one holding a ``config.json`` or
    ``model.safetensors`` is refused (:data:`cvt.core.files.NATIVE_DIR`).
    """
    path = Path(path)
    meta = native.encode_metadata(config, spec)
    if path.suffix == ".safetensors":
        return save_safetensors(sd, path, meta)
    check_suffix(path, (), "a native weights directory")
    doc = {"format_tag": native.FORMAT_TAG, "config": config.to_dict()}
    if spec is not None:
        doc["spec"] = spec.to_dict()
    tensors = _contiguous(sd)

    def write(tmp: Path) -> None:
        save_safetensors_file(tensors, tmp / "model.safetensors", meta, framework="pt")
        (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(path, write, kind=NATIVE_DIR)


def save_hf(
    sd: Mapping[str, torch.Tensor], config: CvTConfig, directory: str | os.PathLike[str],
    labels: LabelSet | Sequence[str] | str | None = None,
) -> Path:  # fmt: skip
    """An HF directory (``config.json`` + ``model.safetensors``) for ``CvtForImageClassification``: the weights
    alone. :func:`save_pretrained` writes the whole directory (processor, model card) from a model.

    ``labels``: the class names for ``id2label`` (names, a :class:`LabelSet`, or ``"imagenet-1k"``; HF's
    ``LABEL_<i>`` without). Refuses (:class:`ConversionError`, before writing) a model transformers' CvT cannot
    build or would compute differently in structure (:func:`cvt.core.weights.hf_incompatibility`). transformers
    always computes exact GELU: a ``quick_gelu`` model is written all the same (as the released checkpoints on
    the hub were), and its logits there differ slightly; ``cvt convert`` says so.
    """
    return _write_hf(sd, config, Path(directory), labels, {})


def save_pretrained(
    model: torch.nn.Module, directory: str | os.PathLike[str], *, activation: str | None = None
) -> Path:
    """Write ``model`` as a Hugging Face directory that ``transformers.pipeline("image-classification",
    model=directory)`` runs as is and that is ready to upload to the hub (``huggingface_hub.upload_folder``).

    Files: ``config.json`` (architecture, ``id2label`` with the model's class names: ImageNet's for a model
    labelled ``"imagenet-1k"``, ``LABEL_<i>`` only when it has none), ``model.safetensors``,
    ``preprocessor_config.json`` (the model's evaluation preprocessing, :meth:`EvalPreprocess.to_hf_processor`)
    and ``README.md`` (a model card, :mod:`cvt.core.modelcard`). Published atomically; every file follows the
    umask. An existing directory keeps its other entries, and a ``README.md`` cvt did not write is kept (a
    card we wrote is replaced).

    ``model``: a :class:`cvt.CvT` (its ``config`` and ``pretrained_cfg`` describe it). ``activation``: what the
    weights are meant to run with, stated in the card (default: the model's own). transformers computes exact
    GELU whatever it says. Raises :class:`ConversionError` (before writing) for a model transformers cannot
    run or a preprocessing its image processors cannot spell.
    """
    directory = Path(directory)
    config: CvTConfig = model.config
    spec: PretrainedSpec = model.pretrained_cfg
    if activation is not None:
        check_activation(activation)
    try:
        processor = spec.preprocess.to_hf_processor()
    except ConfigError as e:
        raise ConversionError(f"{directory}: cannot write an HF directory: {e}") from None
    extra = {
        "preprocessor_config.json": json.dumps(processor, indent=2) + "\n",
        "README.md": model_card(config, spec, activation=activation),
    }
    return _write_hf(model.state_dict(), config, directory, spec.labels, extra)


def _write_hf(
    sd: Mapping[str, torch.Tensor], config: CvTConfig, directory: Path,
    labels: LabelSet | Sequence[str] | str | None, extra: Mapping[str, str],
) -> Path:  # fmt: skip
    """``config.json`` + ``model.safetensors`` + the ``extra`` text files, published together."""
    check_suffix(directory, (), "an HF directory")
    problem = hf_incompatibility(config)
    if problem is not None:
        raise ConversionError(f"{directory}: cannot write an HF directory: {problem}")
    hf_sd = _contiguous(convert_state_dict(sd, "native", "hf"))
    hf_config = json.dumps(config.to_hf_config(labels), indent=2) + "\n"

    def write(tmp: Path) -> None:
        save_safetensors_file(hf_sd, tmp / "model.safetensors", {"format": "pt"}, framework="pt")
        (tmp / "config.json").write_text(hf_config, encoding="utf-8")
        for name, text in extra.items():
            if name == "README.md" and not _may_replace_card(directory / name):
                continue  # a user's own card stays; ours is replaced
            (tmp / name).write_text(text, encoding="utf-8")

    return atomic_write_dir(directory, write, kind=HF_DIR)


def _may_replace_card(path: Path) -> bool:
    """True when no ``README.md`` is there, or it is a card cvt wrote (:func:`cvt.core.modelcard.is_ours`)."""
    if not os.path.lexists(path):
        return True
    try:
        return is_ours(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:  # a directory, a dangling link, unreadable: not ours to replace
        return False


def save_official(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """A plain pickled state dict with the official key names (what ``microsoft/CvT`` loads): ``.pth`` / ``.pt``."""
    check_suffix(path, (".pth", ".pt"), "an official state dict")
    off = _contiguous(convert_state_dict(sd, "native", "official"))
    return atomic_write(path, lambda tmp: torch.save(off, tmp))

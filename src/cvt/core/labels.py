"""Class names: the ImageNet-1k list shipped in the package, HF ``id2label``, or a user's label file.

``imagenet_1k.txt`` holds one ``wnid<TAB>names`` line per class, in class-index order (the WordNet lemmas
every ImageNet-1k model uses, e.g. ``n02123045	tabby, tabby cat`` for class 281). It is read on first use;
nothing is downloaded.

Precedence (:func:`resolve_labels`): a user label file, then the model's own names (HF ``id2label`` or a
cvt-torch file's labels; HF's placeholder ``LABEL_<i>`` names do not count), then ImageNet-1k for a
1000-class head, then ``class_<i>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import LabelError
from .spec import IMAGENET_1K

IMAGENET_1K_FILE = "imagenet_1k.txt"
_PLACEHOLDER = re.compile(r"^LABEL_\d+$")


@lru_cache(maxsize=1)
def _imagenet_rows() -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath(IMAGENET_1K_FILE).read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)
    if len(rows) != 1000:  # pragma: no cover - guards a broken install
        raise RuntimeError(f"{IMAGENET_1K_FILE}: expected 1000 classes, found {len(rows)}")
    return rows  # type: ignore[return-value]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (``"tabby, tabby cat"``, ...)."""
    return [name for _, name in _imagenet_rows()]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids (``"n01440764"``, ...) in class-index order."""
    return [wnid for wnid, _ in _imagenet_rows()]


def load_label_file(path: str | os.PathLike[str]) -> list[str]:
    """Read class names from a text file (one per line) or JSON.

    JSON may be a list of names, a ``{"0": name, ...}`` mapping, or a mapping holding ``id2label``
    (an HF ``config.json``). Text lines may be ``name`` or ``wnid<TAB>name``; blank trailing lines are
    ignored. Raises :class:`LabelError` naming the file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise LabelError(f"{p}: cannot read label file ({reason})") from None
    stripped = text.lstrip()
    if p.suffix.lower() == ".json" or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelError(f"{p}: not valid JSON ({e})") from None
        labels = _labels_from_json(data, p)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        labels = [line.split("\t", 1)[-1].strip() for line in lines]
    if not labels:
        raise LabelError(f"{p}: no labels found")
    return labels


def _labels_from_json(data: object, path: Path) -> list[str]:
    if isinstance(data, dict) and "id2label" in data:
        data = data["id2label"]
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    if isinstance(data, dict):
        try:
            index = {int(k): str(v) for k, v in data.items()}
        except (TypeError, ValueError):
            raise LabelError(f"{path}: JSON mapping keys must be class indices") from None
        if sorted(index) != list(range(len(index))):
            raise LabelError(f"{path}: class indices must be 0..{len(index) - 1} without gaps")
        return [index[i] for i in range(len(index))]
    raise LabelError(f"{path}: expected a JSON list of names or an index -> name mapping")


def resolve_labels(
    num_classes: int,
    model_labels: Sequence[str] | str | None = None,
    label_file: str | os.PathLike[str] | Sequence[str] | None = None,
) -> list[str]:
    """Names for ``num_classes`` outputs (see the module docstring for the precedence).

    ``model_labels``: the weights' own names (``PretrainedSpec.labels``: names or ``"imagenet-1k"``).
    ``label_file`` may also be a list of names. A user list of the wrong length raises :class:`LabelError`.
    """
    if label_file is not None:
        if isinstance(label_file, (str, os.PathLike)):
            labels, source = load_label_file(label_file), str(label_file)
        else:
            labels, source = [str(x) for x in label_file], "labels"
        if len(labels) != num_classes:
            raise LabelError(f"{source}: has {len(labels)} labels but the model has {num_classes} classes")
        return labels
    if model_labels == IMAGENET_1K and num_classes == 1000:
        return imagenet_labels()
    if (
        model_labels
        and not isinstance(model_labels, str)
        and len(model_labels) == num_classes
        and not all(_PLACEHOLDER.match(x) for x in model_labels)
    ):
        return list(model_labels)
    if num_classes == 1000:
        return imagenet_labels()
    return [f"class_{i}" for i in range(num_classes)]

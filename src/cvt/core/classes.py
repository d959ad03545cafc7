"""Which model class each evaluation class is: class folders (or list labels) matched by name. No framework.

``cvt eval`` and the Keras and Flax ``evaluate`` helpers read their data through here, so one folder maps the same
way in every front-end:

* :func:`read_eval_folder` lists a folder of class folders (or a data root holding ``val/``), no image decoded;
* :func:`map_eval_classes` maps the data's class names to the model's class indices (:class:`ClassMapping`), by
  name whenever names exist (the rule is in its docstring);
* :func:`eval_samples` applies the mapping: ``(image path, class index)`` pairs and one name per model class.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .images import list_class_images
from .labels import LabelSet, imagenet_wnids

SYNSET = re.compile(r"^n\d{8}$")  # an ImageNet synset id (n01440764): ImageNet val's folder names


def few(names: Sequence[str], n: int = 10) -> str:
    """``a, b, c`` for at most ``n`` names, then ``... (K in all)``."""
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def sort_classes(names: Sequence[str] | set[str]) -> list[str]:
    """Numeric order when every name is an integer (``2`` before ``10``), else lexicographic."""
    names = list(names)
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def scan_folder(root: str | os.PathLike[str], *, empty: list[str] | None = None) -> dict[str, list[str]]:
    """``{class name: [image paths]}`` for ``root/<class>/**/<image>`` (class folders that hold images).

    ``empty``: when given, the names of class folders holding no image are appended to it (training warns).
    Raises :class:`DataError` naming ``root`` when it is not a folder or no class folder holds an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = {}
    # one walk for all classes: a real file counts once, and no link leads one class into another's folder
    for name, files in list_class_images(root).items():
        if files:
            found[name] = files
        elif empty is not None:
            empty.append(name)
    if not found:
        raise DataError(f"{root}: no class folders with images (expected {root}/<class>/<image>)")
    return found


class ClassMapping(dict[str, int]):
    """``{class folder or list label: model class index}``, and the rule of :func:`map_eval_classes` that made it.

    ``rule``: ``"labels"`` (by the model's class names), ``"index"`` (integer names), ``"synset"`` (ImageNet
    synset ids, ImageNet-1k order) or ``"sorted"`` (a model without class names: sorted position, a guess);
    ``note``: one line for the user when the mapping is a guess, else ``None``. Compares equal to a plain dict.
    """

    def __init__(self, mapping: dict[str, int], rule: str, note: str | None = None):
        super().__init__(mapping)
        self.rule = rule
        self.note = note


def map_eval_classes(
    names: Sequence[str],
    num_classes: int,
    labels: LabelSet | Sequence[str] | str | None = None,
    what: str = "class folders",
) -> ClassMapping:
    """Map evaluation class folders (or list labels) to the model's class indices, by name whenever names exist.

    In order: names that are all the model's own labels map to them (any subset of the classes); integer names
    are indices (ImageNet-V2 folders ``0..999``; not when the model's real labels are themselves integers);
    ImageNet synset ids (``n01440764``) map to the ImageNet-1k order for a 1000-class model. Past these, a model
    with real class names (not ``None``, not names that only restate their index: :attr:`LabelSet.index_only`)
    raises :class:`DataError` listing the names that match none of its labels. Only a model without names maps
    exactly ``num_classes`` names by sorted position, and says so in the result's ``note``.

    ``labels``: the model's names (a :class:`LabelSet`, a list, or ``"imagenet-1k"``; names for another head size
    count as none); ``what``: the noun used in messages.
    """
    names = list(dict.fromkeys(names))
    parsed = LabelSet.parse(labels)
    model = parsed.for_head(num_classes) if parsed is not None else None
    real = model is not None and not model.index_only
    if model is not None:
        by_name = model.lookup(names, what)
        if by_name is not None:
            return ClassMapping(by_name, "labels")
    integer_labels = model is not None and real and all(label.isdigit() for label in model.names)
    if all(n.isdigit() for n in names) and not integer_labels:
        bad = [n for n in sort_classes(names) if int(n) >= num_classes]
        if bad:
            raise DataError(
                f"{what}: {bad[0]!r} is not a class index of a {num_classes}-class model (0..{num_classes - 1})"
            )
        return ClassMapping({n: int(n) for n in names}, "index")
    if num_classes == 1000 and all(SYNSET.match(n) for n in names):
        wnids = {s: i for i, s in enumerate(imagenet_wnids())}  # standard order = sorted synset ids
        unknown = [n for n in sort_classes(names) if n not in wnids]
        if unknown:
            raise DataError(f"{what}: not ImageNet-1k synsets: {few(unknown)}")
        return ClassMapping({n: wnids[n] for n in names}, "synset")
    if model is not None and real:
        known = set(model.names)
        unmatched = [n for n in sort_classes(names) if n not in known]
        raise DataError(
            f"{what}: {len(unmatched)} of {len(names)} match none of the model's labels: {few(unmatched)} "
            f"(the model's {num_classes} labels: {few(model.names)}); name them by the model's labels "
            f"(a subset is fine) or by class index 0..{num_classes - 1}"
        )
    if len(names) == num_classes:
        order = sort_classes(names)
        why = "the model has no class names" if model is None else "the model's classes are named by index only"
        shown = few([f"{n}->{i}" for i, n in enumerate(order)])
        return ClassMapping(
            {n: i for i, n in enumerate(order)}, "sorted", f"{why}; {what} mapped in sorted order: {shown}"
        )
    raise DataError(
        f"cannot map {len(names)} {what} ({few(sort_classes(names), 5)}) to a {num_classes}-class model without class "
        f"names: name them by class index (0..{num_classes - 1}) or ImageNet synset id, or give exactly one per class "
        f"(mapped in sorted order)"
    )


def class_names(
    mapping: dict[str, int], num_classes: int, labels: LabelSet | Sequence[str] | str | None = None
) -> list[str]:
    """One name per model class: the model's own names (when they fit its head), else the data's names at their
    indices (``"<i>"`` for the classes the data does not name)."""
    parsed = LabelSet.parse(labels)
    model = parsed.for_head(num_classes) if parsed is not None else None
    if model is not None and model.inline:
        return list(model.names)
    names = [str(i) for i in range(num_classes)]
    for name, i in mapping.items():
        names[i] = name
    return names


@dataclass
class EvalData:
    """What an evaluation reads, found before any model is loaded (so bad data fails in seconds).

    ``where``: the folder or file (messages name it); ``rows``: ``(image path, class name as the data spells
    it)``; ``names``: the class names, sorted; ``kind``: ``"folder"``, ``"list"`` or ``"digits"`` (no rows).
    """

    where: str
    rows: list[tuple[str, str]]
    names: list[str]
    kind: str

    @property
    def what(self) -> str:
        """What messages call the data's classes."""
        return {"folder": "class folders", "list": "list labels", "digits": "classes"}[self.kind]


def read_eval_folder(path: str | os.PathLike[str]) -> EvalData:
    """A folder of class folders, or a data root holding ``val/`` (then its ``val/`` split); no image is decoded.

    Raises :class:`DataError` (one line, naming the path) for a missing path, a file, or a folder without images.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of class folders")
    subdirs = {e.name for e in os.scandir(path) if e.is_dir()}
    if "val" in subdirs and subdirs <= {"train", "val", "test"}:  # a data root: evaluate its val/ split
        path = path / "val"
    found = scan_folder(path)
    rows = [(p, c) for c, files in found.items() for p in files]
    return EvalData(str(path), rows, sort_classes(found), "folder")


@dataclass(frozen=True)
class EvalSamples:
    """Evaluation data mapped to a model: ``samples`` ``(image path, class index)``, ``classes`` one name per
    model class (``num_classes``), and the :class:`ClassMapping` that gave the indices."""

    samples: list[tuple[str, int]]
    classes: list[str]
    mapping: ClassMapping


def eval_samples(
    found: EvalData, num_classes: int, labels: LabelSet | Sequence[str] | str | None = None
) -> EvalSamples:
    """``found``'s classes mapped to the model's with :func:`map_eval_classes`; raises :class:`DataError` that
    names ``found.where``."""
    try:
        mapping = map_eval_classes(found.names, num_classes, labels, found.what)
    except DataError as e:
        raise DataError(f"{found.where}: {e}") from None
    samples = [(path, mapping[name]) for path, name in found.rows]
    return EvalSamples(samples, class_names(mapping, num_classes, labels), mapping)

"""Data sets for training and evaluation: image folders, CSV/JSON lists, and scikit-learn's digits.

A *source* (:class:`ImageFiles`, :class:`DigitsImages`) yields ``(PIL RGB image, class index)`` and raises
:class:`~cvt.core.errors.ImageError` for an unusable file. :class:`TrainSet` and :class:`EvalSet` wrap a
source with a transform; they never let a corrupt image stop a run:

* :class:`TrainSet` substitutes the next readable image (so batch shapes, and every process's step count
  under DDP, stay the same) and reports what it skipped with the sample;
* :class:`EvalSet` drops the image (a substitute would be counted twice) and reports it.

:class:`TrainSet` is indexed by ``(index, epoch)`` pairs (see :class:`~cvt.train.sampler.EpochBatchSampler`):
the augmentation generator is seeded from ``(seed, epoch, index)``, so results do not depend on the number
of DataLoader workers or processes, nor on where a resumed run picks up.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError, ImageError
from ..core.images import list_class_images, load_image
from ..core.labels import imagenet_wnids

_SYNSET = re.compile(r"^n\d{8}$")


# ---------------------------------------------------------------------------- sources
class ImageFiles(torch.utils.data.Dataset):
    """``(path, class index)`` pairs, decoded with PIL on access (in DataLoader workers)."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str]):
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[Image.Image, int]:
        path, y = self.samples[i]
        return load_image(path), y

    def describe(self, i: int) -> str:
        return self.samples[i][0]


class DigitsImages(torch.utils.data.Dataset):
    """scikit-learn's 8x8 digits as RGB PIL images (grey levels 0..16 scaled to 0..255)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images = images  # (N, 8, 8) uint8
        self.targets = [int(t) for t in targets]
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> tuple[Image.Image, int]:
        return digit_image(self.images[i]), self.targets[i]

    def describe(self, i: int) -> str:
        return f"digits[{i}]"


def digit_image(img8: np.ndarray) -> Image.Image:
    """One ``(8, 8)`` uint8 digit -> an RGB PIL image (what a user would save as PNG and predict on)."""
    return Image.fromarray(np.ascontiguousarray(img8, dtype=np.uint8), mode="L").convert("RGB")


def digits_split(val_fraction: float = 0.2, seed: int = 0) -> tuple[DigitsImages, DigitsImages]:
    """The fixed, stratified split of scikit-learn's 1,797 digits: ``(train, held-out)``.

    Always the same for the same ``(val_fraction, seed)``: ``cvt train``, ``cvt eval digits`` and the SVC
    baseline (:mod:`cvt.train.baseline`) all see the same held-out images.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            "the digits data set ships with scikit-learn: pip install 'cvt-models[train]' (or scikit-learn)"
        ) from None
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    idx = np.arange(len(images))
    tr, va = train_test_split(idx, test_size=val_fraction, stratify=d.target, random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    return DigitsImages(images[tr], d.target[tr]), DigitsImages(images[va], d.target[va])


# ---------------------------------------------------------------------------- class names
def _few(names: Sequence[str], n: int = 10) -> str:
    """``a, b, c`` for at most ``n`` names, then ``... (K in all)``."""
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def sort_classes(names: Sequence[str]) -> list[str]:
    """Numeric order when every name is an integer (``2`` before ``10``), else lexicographic."""
    names = list(names)
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def class_list(names: Sequence[str]) -> list[str]:
    """The classes of a training set: integer names index themselves (``0..max``), others sort."""
    names = sort_classes(set(names))
    if names and all(n.isdigit() for n in names):
        return [str(i) for i in range(int(names[-1]) + 1)]
    return names


def scan_folder(root: str | os.PathLike[str], *, empty: list[str] | None = None) -> dict[str, list[str]]:
    """``{class name: [image paths]}`` for ``root/<class>/**/*.jpg`` (class folders that hold images).

    ``empty``: when given, the names of class folders holding no image are appended to it (training warns).
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


def read_list(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(image path, label)`` rows of a CSV (``path,label``, header optional) or JSON list file.

    JSON: ``[["a.jpg", "cat"], ...]``, ``[{"path": "a.jpg", "label": "cat"}, ...]`` or ``{"samples": [...]}``.
    Relative paths are relative to the list file's folder; labels are class names or integer indices.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    base = path.parent
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data: Any = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("samples", data.get("images"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of [path, label] or {{path, label}} entries")
        for i, item in enumerate(data):
            if isinstance(item, dict) and "path" in item and "label" in item:
                rows.append((str(item["path"]), str(item["label"])))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                rows.append((str(item[0]), str(item[1])))
            else:
                raise DataError(f"{path}: entry {i} is not [path, label] or {{path, label}}: {item!r}")
    else:
        with open(path, newline="") as f:
            for i, rec in enumerate(csv.reader(f)):
                if not rec or rec[0].startswith("#"):
                    continue
                if i == 0 and [c.strip().lower() for c in rec[:2]] == ["path", "label"]:
                    continue
                if len(rec) < 2:
                    raise DataError(f"{path}:{i + 1}: expected 'path,label', got {','.join(rec)!r}")
                rows.append((rec[0].strip(), rec[1].strip()))
    if not rows:
        raise DataError(f"{path}: no samples")
    return [(str(base / p) if not os.path.isabs(p) else p, label) for p, label in rows]


def _index(rows: Sequence[tuple[str, str]], classes: Sequence[str], where: str) -> list[tuple[str, int]]:
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sort_classes({label for _, label in rows if label not in pos})
    if unknown:
        raise DataError(
            f"{where}: classes not in the training set: {_few(unknown)} (training classes: {_few(list(classes), 20)})"
        )
    return [(p, pos[label]) for p, label in rows]


# ---------------------------------------------------------------------------- what training reads
@dataclass
class DataBundle:
    """The two sources of a recipe, their classes, and what messages call them (a folder, a list file)."""

    train: ImageFiles | DigitsImages
    val: ImageFiles | DigitsImages
    classes: list[str]
    train_name: str = "the training set"
    val_name: str = "the validation set"

    def check_readable(self, warn: Callable[[str], None] | None = None) -> None:
        """Refuse data that no image of can be read; warn (once) about classes none of whose images can be.

        Decodes, in each training class, its images in order until one reads: one image per class for healthy
        data, every file only of a class with none readable; then validation images until one reads. Raises
        :class:`DataError` naming the split (a DataLoader worker would otherwise fail mid-epoch).
        """
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(self.train.targets):
            by_class.setdefault(y, []).append(i)
        dead = {y: p for y, idx in sorted(by_class.items()) if (p := _none_readable(self.train, idx)) is not None}
        if len(dead) == len(by_class):
            first = next(iter(dead.values()), "no images")
            raise DataError(f"{self.train_name}: no readable image among its {len(self.train)} files (first: {first})")
        if dead:
            names = [self.classes[y] for y in dead]
            _warn(
                warn,
                f"warning: {self.train_name}: no readable image in class(es) {_few(names)}; other images stand in "
                f"for them (first: {next(iter(dead.values()))})",
            )
        bad = _none_readable(self.val, range(len(self.val)))
        if bad is not None:
            raise DataError(f"{self.val_name}: no readable image among its {len(self.val)} files (first: {bad})")


def _none_readable(source: ImageFiles | DigitsImages, indices: Sequence[int]) -> str | None:
    """None as soon as one of ``indices`` decodes; else the first file's problem (``path: reason``)."""
    first = None
    for i in indices:
        try:
            source.load(i)
            return None
        except ImageError as e:
            first = first or _with_path(e, source.describe(i))
    return first or "no images"


def _warn(warn: Callable[[str], None] | None, line: str) -> None:
    if warn is None:
        print(line, file=sys.stderr)
    else:
        warn(line)


def build_sources(
    kind: str,
    *,
    root: str | None = None,
    train_list: str | None = None,
    val_list: str | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> DataBundle:
    """Scan / read the data a recipe names. Raises :class:`DataError` (one line) before anything trains.

    ``warn`` gets the one ``warning: ...`` line about class folders holding no image (default: stderr).
    """
    if kind == "digits":
        tr, va = digits_split(val_fraction, split_seed)
        bundle = DataBundle(tr, va, list(tr.classes), "digits (training split)", "digits (held-out split)")
    elif kind == "folder":
        base = Path(str(root)).expanduser()
        empty_train: list[str] = []
        empty_val: list[str] = []
        train_map = scan_folder(base / "train", empty=empty_train)
        val_map = scan_folder(base / "val", empty=empty_val)
        classes = class_list(train_map)
        if len(classes) < 2:  # an empty class folder is not a class: say so, rather than "1 class"
            raise DataError(
                f"data.root: {base / 'train'} has images in {len(classes)} class folder ({', '.join(classes)}); "
                f"at least 2 classes are needed (class folders with no images: {_few(empty_train) or 'none'})"
            )
        empty = [f"train/{c}" for c in empty_train] + [f"val/{c}" for c in empty_val]
        if empty:  # silently dropping a class would train a head that cannot predict it
            _warn(warn, f"warning: data.root: class folders with no images skipped: {_few(empty)}")
        missing = sort_classes(set(val_map) - set(classes))
        if missing:
            hollow = [f"train/{c}" for c in missing if c in empty_train]  # the folder is there, its images are not
            raise DataError(
                f"data.root: classes in {base / 'val'} but not in {base / 'train'}: {', '.join(missing[:10])}"
                f" (train classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"
                f"{'; no images in ' + _few(hollow) if hollow else ''})"
            )
        rows_tr = [(p, c) for c, files in train_map.items() for p in files]
        rows_va = [(p, c) for c, files in val_map.items() for p in files]
        bundle = DataBundle(
            ImageFiles(_index(rows_tr, classes, "train"), classes),
            ImageFiles(_index(rows_va, classes, f"{base / 'val'}"), classes),
            classes,
            str(base / "train"),
            str(base / "val"),
        )
    elif kind == "list":
        rows_tr = read_list(str(train_list))
        rows_va = read_list(str(val_list))
        classes = class_list([label for _, label in rows_tr])
        bundle = DataBundle(
            ImageFiles(_index(rows_tr, classes, str(train_list)), classes),
            ImageFiles(_index(rows_va, classes, f"data.val: {val_list}"), classes),
            classes,
            str(train_list),
            str(val_list),
        )
    else:
        raise DataError(f"data.kind: {kind!r} is not one of digits, folder, list")
    if len(bundle.classes) < 2:
        raise DataError(f"the training set has {len(bundle.classes)} class; at least 2 are needed")
    bundle.train = _limit(bundle.train, max_train, split_seed)
    bundle.val = _limit(bundle.val, max_val, split_seed)
    return bundle


def _limit(src: ImageFiles | DigitsImages, n: int | None, seed: int) -> ImageFiles | DigitsImages:
    """The first ``n`` samples after a seeded shuffle (quick runs); the source itself when ``n`` is None."""
    if n is None or n >= len(src):
        return src
    keep = np.sort(np.random.default_rng(seed).permutation(len(src))[:n])
    if isinstance(src, DigitsImages):
        return DigitsImages(src.images[keep], np.asarray(src.targets)[keep])
    return ImageFiles([src.samples[i] for i in keep], src.classes)


# ---------------------------------------------------------------------------- transforms applied
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch (independent of workers and processes)."""
    return np.random.default_rng([seed, epoch, index])


class TrainSet(torch.utils.data.Dataset):
    """``dataset[(index, epoch)] -> (image (3, S, S), class, skipped)``; corrupt images are substituted.

    ``skipped`` is a tuple of ``(path, "path: reason")`` pairs for the unreadable files met on the way (the
    path alone identifies a file: one met twice, as itself and as a stand-in, is counted once).
    """

    def __init__(self, source: Any, transform: Callable[[Image.Image, np.random.Generator], torch.Tensor], seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple[tuple[str, str], ...]]:
        index, epoch = key
        skipped: list[tuple[str, str]] = []
        n = len(self.source)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                img, y = self.source.load(j)
                x = self.transform(img, sample_rng(self.seed, epoch, index))
            except ImageError as e:
                name = self.source.describe(j)
                skipped.append((name, _with_path(e, name)))
                continue
            return x, y, tuple(skipped)
        raise DataError(f"no readable image in the training set ({skipped[0][1] if skipped else 'empty'})")


class EvalSet(torch.utils.data.Dataset):
    """``dataset[i] -> (image (3, S, S) or None, class, skipped)``; a corrupt image gives ``None``."""

    def __init__(self, source: Any, transform: Callable[[Image.Image], torch.Tensor]):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, tuple[str, ...]]:
        try:
            img, y = self.source.load(i)
            return self.transform(img), y, ()
        except ImageError as e:
            return None, self.source.targets[i], (_with_path(e, self.source.describe(i)),)


def _with_path(e: ImageError, name: str) -> str:
    msg = str(e)
    return msg if msg.startswith(name) else f"{name}: {msg}"


Item = tuple[torch.Tensor | None, int, tuple[str, ...]]


def collate(batch: list[Item]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """-> ``(images (B, 3, S, S), labels (B,), skipped file messages)``; ``None`` images are left out."""
    kept = [(x, y) for x, y, _ in batch if x is not None]
    skipped = [s for _, _, bad in batch for s in bad]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept], dtype=torch.long), skipped


# ---------------------------------------------------------------------------- evaluation class mapping
_INDEX_NAME = re.compile(r"^(?:LABEL_|class_)?(\d+)$")  # HF's LABEL_<i>, our class_<i>, or the bare index


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


def _model_labels(labels: Sequence[str] | str | None, num_classes: int) -> tuple[str, ...] | None:
    """The model's class names in index order (``"imagenet-1k"`` expanded); ``None`` when it has none that fit."""
    from ..core.labels import imagenet_labels
    from ..core.spec import IMAGENET_1K

    if isinstance(labels, str):
        return tuple(imagenet_labels()) if labels == IMAGENET_1K and num_classes == 1000 else None
    if labels is None or len(labels) != num_classes:  # names for another head size describe no output of this one
        return None
    return tuple(str(x) for x in labels)


def _only_indices(labels: Sequence[str]) -> bool:
    """Placeholder names that only restate each class's index (``LABEL_3``, ``class_3``, ``3`` at position 3)."""
    return all((m := _INDEX_NAME.match(x)) is not None and int(m.group(1)) == i for i, x in enumerate(labels))


def map_eval_classes(
    names: Sequence[str],
    num_classes: int,
    labels: Sequence[str] | str | None = None,
    what: str = "class folders",
) -> ClassMapping:
    """Map evaluation class folders (or list labels) to the model's class indices, by name whenever names exist.

    In order: names that are all the model's own labels map to them (any subset of the classes); integer names
    are indices (ImageNet-V2 folders ``0..999``; not when the model's real labels are themselves integers);
    ImageNet synset ids (``n01440764``) map to the ImageNet-1k order for a 1000-class model. Past these, a model
    with real class names (not ``None``, not placeholders such as HF's ``LABEL_<i>`` or ``"0".."K-1"``) raises
    :class:`DataError` listing the names that match none of its labels. Only a model without names maps
    exactly ``num_classes`` names by sorted position, and says so in the result's ``note``.

    ``labels``: the model's names in index order, or ``"imagenet-1k"``; ``what``: the noun used in messages.
    """
    names = list(dict.fromkeys(names))
    model = _model_labels(labels, num_classes)
    real = model is not None and not _only_indices(model)
    pos: dict[str, int] = {}
    if model is not None:
        for i, label in enumerate(model):
            pos.setdefault(label, i)
        if all(n in pos for n in names):
            ambiguous = [n for n in names if model.count(n) > 1]
            if ambiguous:
                where = ", ".join(str(i) for i, label in enumerate(model) if label == ambiguous[0])
                raise DataError(
                    f"{what}: {ambiguous[0]!r} names more than one of the model's classes ({where}); "
                    f"name them by class index or ImageNet synset id instead"
                )
            return ClassMapping({n: pos[n] for n in names}, "labels")
    integer_labels = real and all(label.isdigit() for label in model or ())
    if all(n.isdigit() for n in names) and not integer_labels:
        bad = [n for n in sort_classes(names) if int(n) >= num_classes]
        if bad:
            raise DataError(
                f"{what}: {bad[0]!r} is not a class index of a {num_classes}-class model (0..{num_classes - 1})"
            )
        return ClassMapping({n: int(n) for n in names}, "index")
    if num_classes == 1000 and all(_SYNSET.match(n) for n in names):
        wnids = {s: i for i, s in enumerate(imagenet_wnids())}  # standard order = sorted synset ids
        unknown = [n for n in sort_classes(names) if n not in wnids]
        if unknown:
            raise DataError(f"{what}: not ImageNet-1k synsets: {_few(unknown)}")
        return ClassMapping({n: wnids[n] for n in names}, "synset")
    if real:
        unmatched = [n for n in sort_classes(names) if n not in pos]
        raise DataError(
            f"{what}: {len(unmatched)} of {len(names)} match none of the model's labels: {_few(unmatched)} "
            f"(the model's {num_classes} labels: {_few(list(model or ()))}); name them by the model's labels "
            f"(a subset is fine) or by class index 0..{num_classes - 1}"
        )
    if len(names) == num_classes:
        order = sort_classes(names)
        why = "the model has no class names" if model is None else "the model's classes are named by index only"
        shown = _few([f"{n}->{i}" for i, n in enumerate(order)])
        return ClassMapping(
            {n: i for i, n in enumerate(order)}, "sorted", f"{why}; {what} mapped in sorted order: {shown}"
        )
    raise DataError(
        f"cannot map {len(names)} {what} ({_few(sort_classes(names), 5)}) to a {num_classes}-class model without class "
        f"names: name them by class index (0..{num_classes - 1}) or ImageNet synset id, or give exactly one per class "
        f"(mapped in sorted order)"
    )


@dataclass
class EvalData:
    """What ``cvt eval DATA`` names, found before any model is loaded (so a bad DATA fails in seconds).

    ``rows``: ``(image path, class name as the data spells it)``; ``names``: the class names, sorted;
    ``kind``: ``"folder"``, ``"list"`` or ``"digits"`` (no rows: the held-out split is built on demand).
    """

    where: str
    rows: list[tuple[str, str]]
    names: list[str]
    kind: str


def read_eval_data(data: str | os.PathLike[str]) -> EvalData:
    """Scan ``digits``, a folder of class folders (or a data root holding ``val/``), or a CSV/JSON list; no image
    is decoded. Raises :class:`DataError` (one line, naming the path) for anything else."""
    from ..core.images import IMAGE_EXTENSIONS

    if str(data) == "digits":
        return EvalData("digits", [], [str(i) for i in range(10)], "digits")
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: an image; DATA is a folder of class folders, a CSV/JSON list or 'digits'")
        try:
            rows = read_list(path)
        except (UnicodeDecodeError, csv.Error) as e:  # a binary file given as DATA
            raise DataError(f"{path}: not a CSV/JSON list of path,label ({type(e).__name__})") from None
        return EvalData(str(path), rows, sort_classes({label for _, label in rows}), "list")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder, a list file or 'digits'")
    subdirs = {e.name for e in os.scandir(path) if e.is_dir()}
    if "val" in subdirs and subdirs <= {"train", "val", "test"}:  # a data root: evaluate its val/ split
        path = path / "val"
    found = scan_folder(path)
    rows = [(p, c) for c, files in found.items() for p in files]
    return EvalData(str(path), rows, sort_classes(found), "folder")


class EvalFiles(ImageFiles):
    """The :class:`ImageFiles` of an evaluation set, with the :class:`ClassMapping` that gave its targets."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], mapping: ClassMapping):
        super().__init__(samples, classes)
        self.mapping = mapping


def eval_source(
    data: str | os.PathLike[str] | EvalData,
    num_classes: int,
    labels: Sequence[str] | str | None = None,
    digits_seed: int = 0,
    digits_fraction: float = 0.2,
) -> EvalFiles | DigitsImages:
    """What ``cvt eval DATA`` evaluates: ``data`` read with :func:`read_eval_data` (or already read), its classes
    mapped to the model's with :func:`map_eval_classes` (``labels``: the model's names, or ``"imagenet-1k"``).

    An :class:`EvalFiles` carries the mapping (``.mapping.note``: what to tell the user); ``digits`` gives the
    held-out :class:`DigitsImages` (classes ``0..9``, mapped by the same rule). Raises :class:`DataError` naming
    the data.
    """
    found = data if isinstance(data, EvalData) else read_eval_data(data)
    what = {"folder": "class folders", "list": "list labels", "digits": "classes"}[found.kind]
    try:
        mapping = map_eval_classes(found.names, num_classes, labels, what)
    except DataError as e:
        raise DataError(f"{found.where}: {e}") from None
    if found.kind == "digits":
        held_out = digits_split(digits_fraction, digits_seed)[1]
        if any(mapping[str(i)] != i for i in range(10)):  # a model naming its digit classes in another order
            held_out = DigitsImages(held_out.images, np.asarray([mapping[str(t)] for t in held_out.targets]))
        held_out.classes = _class_names(mapping, num_classes, labels)
        return held_out
    samples = [(p, mapping[c]) for p, c in found.rows]
    return EvalFiles(samples, _class_names(mapping, num_classes, labels), mapping)


def _class_names(mapping: dict[str, int], num_classes: int, labels: Sequence[str] | str | None) -> list[str]:
    """One name per model class: the model's own names, else the data's names at their indices (``i`` elsewhere)."""
    if labels is not None and not isinstance(labels, str) and len(labels) == num_classes:
        return [str(x) for x in labels]
    names = [str(i) for i in range(num_classes)]
    for n, i in mapping.items():
        names[i] = n
    return names

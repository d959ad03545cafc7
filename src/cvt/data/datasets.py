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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError, ImageError
from ..core.images import list_images, load_image
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


def scan_folder(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``{class name: [image paths]}`` for ``root/<class>/**/*.jpg`` (class folders that hold images)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = list_images(entry.path)
            if files:
                found[entry.name] = files
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
        shown = ", ".join(unknown[:10]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        known = ", ".join(classes[:20]) + (f" ... ({len(classes)} in all)" if len(classes) > 20 else "")
        raise DataError(f"{where}: classes not in the training set: {shown} (training classes: {known})")
    return [(p, pos[label]) for p, label in rows]


# ---------------------------------------------------------------------------- what training reads
@dataclass
class DataBundle:
    """The two sources of a recipe and their classes."""

    train: ImageFiles | DigitsImages
    val: ImageFiles | DigitsImages
    classes: list[str]


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
) -> DataBundle:
    """Scan / read the data a recipe names. Raises :class:`DataError` (one line) before anything trains."""
    if kind == "digits":
        tr, va = digits_split(val_fraction, split_seed)
        bundle = DataBundle(tr, va, list(tr.classes))
    elif kind == "folder":
        base = Path(str(root)).expanduser()
        train_map = scan_folder(base / "train")
        val_map = scan_folder(base / "val")
        classes = class_list(train_map)
        missing = sort_classes(set(val_map) - set(classes))
        if missing:
            raise DataError(
                f"data.root: classes in {base / 'val'} but not in {base / 'train'}: {', '.join(missing[:10])}"
                f" (train classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''})"
            )
        rows_tr = [(p, c) for c, files in train_map.items() for p in files]
        rows_va = [(p, c) for c, files in val_map.items() for p in files]
        bundle = DataBundle(
            ImageFiles(_index(rows_tr, classes, "train"), classes),
            ImageFiles(_index(rows_va, classes, f"{base / 'val'}"), classes),
            classes,
        )
    elif kind == "list":
        rows_tr = read_list(str(train_list))
        rows_va = read_list(str(val_list))
        classes = class_list([label for _, label in rows_tr])
        bundle = DataBundle(
            ImageFiles(_index(rows_tr, classes, str(train_list)), classes),
            ImageFiles(_index(rows_va, classes, f"data.val: {val_list}"), classes),
            classes,
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

    ``skipped`` is a tuple of ``"path: reason"`` strings for the unreadable files met on the way.
    """

    def __init__(self, source: Any, transform: Callable[[Image.Image, np.random.Generator], torch.Tensor], seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        index, epoch = key
        skipped: list[str] = []
        n = len(self.source)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                img, y = self.source.load(j)
                x = self.transform(img, sample_rng(self.seed, epoch, index))
            except ImageError as e:
                skipped.append(_with_path(e, self.source.describe(j)))
                continue
            return x, y, tuple(skipped)
        raise DataError(f"no readable image in the training set ({skipped[0] if skipped else 'empty'})")


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
def map_eval_classes(names: Sequence[str], num_classes: int, labels: Sequence[str] | None = None) -> dict[str, int]:
    """Map evaluation class folders (or list labels) to the model's class indices.

    In order: names that are the model's own labels map to them (a model trained here on folders ``cat``,
    ``dog``); integer names are indices (ImageNet-V2 folders ``0..999``); ImageNet synset ids (``n01440764``)
    map to the standard ImageNet-1k order (sorted ids: the order the 1000-class heads use); otherwise, when
    there are exactly ``num_classes`` names, the sorted names. Anything else raises :class:`DataError`.
    """
    names = list(names)
    if labels and all(n in labels for n in names):
        pos = {label: i for i, label in enumerate(labels)}
        return {n: pos[n] for n in names}
    if all(n.isdigit() for n in names):
        bad = [n for n in names if int(n) >= num_classes]
        if bad:
            raise DataError(f"class folder {bad[0]!r} is not a class index of a {num_classes}-class model")
        return {n: int(n) for n in names}
    if all(_SYNSET.match(n) for n in names) and num_classes == 1000:
        pos = {s: i for i, s in enumerate(imagenet_wnids())}  # standard order = sorted synset ids
        unknown = [n for n in names if n not in pos]
        if unknown:
            raise DataError(f"class folder {unknown[0]!r} is not an ImageNet-1k synset")
        return {n: pos[n] for n in names}
    if len(names) == num_classes:
        return {n: i for i, n in enumerate(sort_classes(names))}
    known = f" (the model's labels: {', '.join(list(labels)[:10])} ...)" if labels else ""
    raise DataError(
        f"cannot map {len(names)} class folders ({', '.join(sort_classes(names)[:5])} ...) to a "
        f"{num_classes}-class model: name them by the model's labels, by index (0..{num_classes - 1}) or by "
        f"ImageNet synset id{known}"
    )


def eval_source(
    data: str | os.PathLike[str],
    num_classes: int,
    labels: Sequence[str] | None = None,
    digits_seed: int = 0,
    digits_fraction: float = 0.2,
) -> ImageFiles | DigitsImages:
    """What ``cvt eval DATA`` reads: ``digits`` (the held-out split), a folder of class folders (or a folder
    holding ``val/``), or a CSV/JSON list; classes mapped with :func:`map_eval_classes`."""
    if str(data) == "digits":
        return digits_split(digits_fraction, digits_seed)[1]
    path = Path(data).expanduser()
    if path.is_file():
        rows = read_list(path)
        mapping = map_eval_classes(sort_classes({label for _, label in rows}), num_classes, labels)
        return ImageFiles([(p, mapping[label]) for p, label in rows], _class_names(mapping, num_classes, labels))
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    subdirs = {e.name for e in os.scandir(path) if e.is_dir()}
    if "val" in subdirs and subdirs <= {"train", "val", "test"}:  # a data root: evaluate its val/ split
        path = path / "val"
    found = scan_folder(path)
    mapping = map_eval_classes(list(found), num_classes, labels)
    samples = [(p, mapping[c]) for c, files in found.items() for p in files]
    return ImageFiles(samples, _class_names(mapping, num_classes, labels))


def _class_names(mapping: dict[str, int], num_classes: int, labels: Sequence[str] | None) -> list[str]:
    if labels and len(labels) == num_classes:
        return list(labels)
    names = [str(i) for i in range(num_classes)]
    for n, i in mapping.items():
        names[i] = n
    return names

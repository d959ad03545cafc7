"""Where images come from, without a framework: image folders, CSV/JSON lists, and scikit-learn's digits.

A *source* (:class:`ImageFiles`, :class:`DigitsImages`) yields ``(PIL RGB image, class index)`` with ``load(i)``
and raises :class:`~cvt.core.errors.ImageError` for an unusable file; ``describe(i)`` names sample ``i`` in
messages. :func:`build_sources` reads what a training recipe names (:class:`DataBundle`); :func:`eval_source`
reads what ``cvt eval DATA`` names, its classes mapped to the model's by name (:mod:`cvt.core.classes`). The
torch data sets over these sources are in :mod:`cvt.data.datasets`; the digits split is also what the Keras and
Flax examples train on (:func:`digits_split`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.classes import ClassMapping, EvalData, eval_samples, few, read_eval_folder, scan_folder, sort_classes
from ..core.errors import DataError, ImageError, first_line
from ..core.images import IMAGE_EXTENSIONS, load_image
from ..core.labels import LabelSet

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- sources
class ImageFiles:
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


class DigitsImages:
    """scikit-learn's 8x8 digits as RGB PIL images (grey levels 0..16 scaled to 0..255)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray | Sequence[int]):
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

    Always the same for the same ``(val_fraction, seed)``: ``cvt train``, ``cvt eval digits``, the SVC baseline
    (:mod:`cvt.train.baseline`) and the Keras and Flax examples all see the same held-out images.
    ``.images``: ``(N, 8, 8)`` uint8, grey levels 0..255; ``.targets``: ``N`` class indices.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            "the digits data set ships with scikit-learn: pip install 'cvt-models[train]' (or scikit-learn)"
        ) from None
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    train, held_out = train_test_split(
        np.arange(len(images)), test_size=val_fraction, stratify=digits.target, random_state=seed
    )
    train, held_out = np.sort(train), np.sort(held_out)
    return DigitsImages(images[train], digits.target[train]), DigitsImages(images[held_out], digits.target[held_out])


def with_path(e: ImageError, name: str) -> str:
    """``"name: reason"`` for an unreadable sample (the message itself when it names the file already)."""
    msg = str(e)
    return msg if msg.startswith(name) else f"{name}: {msg}"


# ---------------------------------------------------------------------------- class names and list files
def class_list(names: Sequence[str] | set[str]) -> list[str]:
    """The classes of a training set: integer names index themselves (``0..max``), others sort."""
    names = sort_classes(set(names))
    if names and all(n.isdigit() for n in names):
        return [str(i) for i in range(int(names[-1]) + 1)]
    return names


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
        except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: brackets nested past Python's limit
            raise DataError(f"{path}: not valid JSON ({first_line(e)})") from None
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
            f"{where}: classes not in the training set: {few(unknown)} (training classes: {few(list(classes), 20)})"
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
                f"warning: {self.train_name}: no readable image in class(es) {few(names)}; other images stand in "
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
            first = first or with_path(e, source.describe(i))
    return first or "no images"


def _warn(warn: Callable[[str], None] | None, line: str) -> None:
    """``warn(line)``, else a warning through :mod:`logging` (``cvt.data.sources``): callers can silence or route
    it, Python prints it on stderr when nothing is configured, and the ``cvt`` command shows it as one line."""
    if warn is None:
        log.warning(line)
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
        train, held_out = digits_split(val_fraction, split_seed)
        bundle = DataBundle(train, held_out, list(train.classes), "digits (training split)", "digits (held-out split)")
    elif kind == "folder":
        bundle = _folder_bundle(Path(str(root)).expanduser(), warn)
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


def _folder_bundle(base: Path, warn: Callable[[str], None] | None) -> DataBundle:
    """``base/train/<class>/...`` and ``base/val/<class>/...`` (the recipe's ``data.root``)."""
    empty_train: list[str] = []
    empty_val: list[str] = []
    train_map = scan_folder(base / "train", empty=empty_train)
    val_map = scan_folder(base / "val", empty=empty_val)
    classes = class_list(train_map)
    if len(classes) < 2:  # an empty class folder is not a class: say so, rather than "1 class"
        raise DataError(
            f"data.root: {base / 'train'} has images in {len(classes)} class folder ({', '.join(classes)}); "
            f"at least 2 classes are needed (class folders with no images: {few(empty_train) or 'none'})"
        )
    empty = [f"train/{c}" for c in empty_train] + [f"val/{c}" for c in empty_val]
    if empty:  # silently dropping a class would train a head that cannot predict it
        _warn(warn, f"warning: data.root: class folders with no images skipped: {few(empty)}")
    missing = sort_classes(set(val_map) - set(classes))
    if missing:
        hollow = [f"train/{c}" for c in missing if c in empty_train]  # the folder is there, its images are not
        raise DataError(
            f"data.root: classes in {base / 'val'} but not in {base / 'train'}: {', '.join(missing[:10])}"
            f" (train classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"
            f"{'; no images in ' + few(hollow) if hollow else ''})"
        )
    rows_tr = [(p, c) for c, files in train_map.items() for p in files]
    rows_va = [(p, c) for c, files in val_map.items() for p in files]
    return DataBundle(
        ImageFiles(_index(rows_tr, classes, "train"), classes),
        ImageFiles(_index(rows_va, classes, f"{base / 'val'}"), classes),
        classes,
        str(base / "train"),
        str(base / "val"),
    )


def _limit(src: ImageFiles | DigitsImages, n: int | None, seed: int) -> ImageFiles | DigitsImages:
    """The first ``n`` samples after a seeded shuffle (quick runs); the source itself when ``n`` is None."""
    if n is None or n >= len(src):
        return src
    keep = np.sort(np.random.default_rng(seed).permutation(len(src))[:n])
    if isinstance(src, DigitsImages):
        return DigitsImages(src.images[keep], np.asarray(src.targets)[keep])
    return ImageFiles([src.samples[i] for i in keep], src.classes)


# ---------------------------------------------------------------------------- what `cvt eval DATA` reads
def read_eval_data(data: str | os.PathLike[str]) -> EvalData:
    """Scan ``digits``, a folder of class folders (or a data root holding ``val/``), or a CSV/JSON list; no image
    is decoded. Raises :class:`DataError` (one line, naming the path) for anything else."""
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
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: not a folder, a list file or 'digits'")
    return read_eval_folder(path)


class EvalFiles(ImageFiles):
    """The :class:`ImageFiles` of an evaluation set, with the :class:`~cvt.core.classes.ClassMapping` that gave
    its targets (``mapping.rule``, and ``mapping.note``: what to tell the user)."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], mapping: ClassMapping):
        super().__init__(samples, classes)
        self.mapping = mapping


def eval_source(
    data: str | os.PathLike[str] | EvalData,
    num_classes: int,
    labels: LabelSet | Sequence[str] | str | None = None,
    digits_seed: int = 0,
    digits_fraction: float = 0.2,
) -> EvalFiles | DigitsImages:
    """What ``cvt eval DATA`` evaluates: ``data`` read with :func:`read_eval_data` (or already read), its classes
    mapped to the model's with :func:`~cvt.core.classes.map_eval_classes` (``labels``: the model's names).

    An :class:`EvalFiles` carries the mapping; ``digits`` gives the held-out :class:`DigitsImages` (classes
    ``0..9``, mapped by the same rule). Raises :class:`DataError` naming the data.
    """
    found = data if isinstance(data, EvalData) else read_eval_data(data)
    mapped = eval_samples(found, num_classes, labels)
    if found.kind != "digits":
        return EvalFiles(mapped.samples, mapped.classes, mapped.mapping)
    held_out = digits_split(digits_fraction, digits_seed)[1]
    if any(mapped.mapping[str(i)] != i for i in range(10)):  # a model naming its digit classes in another order
        held_out = DigitsImages(held_out.images, [mapped.mapping[str(t)] for t in held_out.targets])
    held_out.classes = mapped.classes
    return held_out

"""Class names: the typed :class:`LabelSet`, the one placeholder rule, and the names a model shows. No framework.

A :class:`LabelSet` holds a model's class names in class-index order and, for a named set, that name. Every
released checkpoint carries ``"imagenet-1k"``: the list shipped in the package (``imagenet_1k.txt``, one
``wnid<TAB>names`` line per class, e.g. ``n02123045	tabby, tabby cat`` for class 281; read on first use, nothing is
downloaded). Files store a named set by its name and any other set as its list of names (:meth:`LabelSet.to_json`,
:meth:`LabelSet.parse`), so spec JSON reads ``"labels": "imagenet-1k"`` or ``"labels": ["cat", "dog"]``.

**The placeholder rule** (written here only): a name is a *placeholder* when it is ``LABEL_<i>`` (HF's default
``id2label``) or ``class_<i>`` (what cvt shows for a class without a name) at its own index ``i``. A set of
placeholders only (:attr:`LabelSet.placeholder`) names nothing: HF's ``config.json`` reader drops it
(:func:`cvt.core.config.hf_labels`) and :func:`resolve_labels` shows the fallback. Evaluation asks one thing more
(:attr:`LabelSet.index_only`): names that all restate their index, placeholders or the bare ``"<i>"`` (the digits
model's ``"0".."9"``), cannot tell classes apart by meaning, so they are never the reason to refuse a folder.

Precedence of the names shown (:func:`resolve_labels`): a user label file, then the model's own names (unless
placeholders), then ImageNet-1k for a 1000-class head, then ``class_<i>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, overload

from .errors import ConfigError, DataError, LabelError, first_line

IMAGENET_1K = "imagenet-1k"  # the label set of every released checkpoint
IMAGENET_1K_FILE = "imagenet_1k.txt"
PLACEHOLDER = "class_{}"  # what cvt shows for class i when the model has no name for it
HF_PLACEHOLDER = "LABEL_{}"  # what transformers writes into id2label for a model without names


def placeholders(num_classes: int, template: str = PLACEHOLDER) -> list[str]:
    """``num_classes`` placeholder names: ``class_0, class_1, ...`` (``template=HF_PLACEHOLDER``: ``LABEL_<i>``)."""
    return [template.format(i) for i in range(num_classes)]


def is_placeholder(name: str, index: int) -> bool:
    """The placeholder rule: ``LABEL_<index>`` or ``class_<index>``, a name that only restates its own index."""
    return name in (PLACEHOLDER.format(index), HF_PLACEHOLDER.format(index))


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


_NAMED_SETS = {IMAGENET_1K: imagenet_labels}  # name -> its names in class-index order


@dataclass(frozen=True)
class LabelSet(Sequence[str]):
    """Class names in class-index order: ``names[i]`` names output ``i``; ``len(labels)`` is the class count.

    ``source``: the named set these names are (``"imagenet-1k"``; files then store that name), or ``""`` when
    files store the names themselves. Build one with :meth:`parse` (a list, a tuple or a set's name) or
    :meth:`named`; it is a read-only sequence of its names.
    """

    names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(name) for name in self.names))
        if self.source:  # files store only the set's name: the names must be that set's
            _check_known(self.source)
            if self.names != tuple(_NAMED_SETS[self.source]()):
                raise ConfigError(f"labels: these {len(self.names)} names are not the set {self.source!r}")

    @classmethod
    def named(cls, name: str) -> LabelSet:
        """A known named set (``"imagenet-1k"``), its names expanded. Raises :class:`ConfigError` for another."""
        _check_known(name)
        return _named(name)

    @classmethod
    def parse(cls, value: LabelSet | Iterable[str] | str | None) -> LabelSet | None:
        """What files and callers give as labels -> a :class:`LabelSet`; ``None`` or ``[]`` (no names) -> ``None``.

        ``value``: a :class:`LabelSet`, a list or tuple of names (JSON's list), or a named set's name. The one
        place that tells these apart. Raises :class:`ConfigError` for an unknown set name or another type.
        """
        if value is None or isinstance(value, LabelSet):
            return value
        if isinstance(value, str):
            return cls.named(value)
        if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
            raise ConfigError(f"labels: expected a list of class names or {IMAGENET_1K!r}, got {value!r}")
        names = tuple(value)
        return cls(names) if names else None

    def to_json(self) -> list[str] | str:
        """What files store (the inverse of :meth:`parse`): the set's name, or the list of names."""
        return self.source or list(self.names)

    @property
    def inline(self) -> bool:
        """True when files store the names themselves (no named set stands for them)."""
        return not self.source

    @property
    def placeholder(self) -> bool:
        """Every name is a placeholder (``LABEL_<i>`` / ``class_<i>`` at its index): the set names nothing."""
        return all(is_placeholder(name, i) for i, name in enumerate(self.names))

    @property
    def index_only(self) -> bool:
        """Every name restates its index: a placeholder or the bare index (``"3"`` at 3). No meaning to match by."""
        return all(name == str(i) or is_placeholder(name, i) for i, name in enumerate(self.names))

    def for_head(self, num_classes: int) -> LabelSet | None:
        """This set for a head of ``num_classes`` outputs: names of another length describe none of them -> ``None``."""
        return self if len(self.names) == num_classes else None

    def lookup(self, names: Iterable[str], what: str = "class folders") -> dict[str, int] | None:
        """Map folder (or list) names to class indices by name: ``{name: index}`` when every name is one of
        this set's (any subset, any order), else ``None``.

        Raises :class:`DataError` for a name that more than one class carries (two ImageNet classes are both
        ``"crane"``): no by-name answer exists then. ``what``: the noun messages use.
        """
        names = list(names)
        where: dict[str, list[int]] = {}
        for i, label in enumerate(self.names):
            where.setdefault(label, []).append(i)
        if not all(name in where for name in names):
            return None
        for name in names:
            if len(where[name]) > 1:
                raise DataError(
                    f"{what}: {name!r} names more than one of the model's classes "
                    f"({', '.join(map(str, where[name]))}); name them by class index or ImageNet synset id instead"
                )
        return {name: where[name][0] for name in names}

    # the read-only sequence of names
    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self.names[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __repr__(self) -> str:  # 1000 ImageNet names would fill a screen
        if self.source:
            return f"LabelSet.named({self.source!r})"
        if len(self.names) <= 10:
            return f"LabelSet(names={self.names!r})"
        return f"<LabelSet of {len(self.names)} names: {', '.join(map(repr, self.names[:5]))}, ...>"


def _check_known(name: str) -> None:
    if name not in _NAMED_SETS:
        raise ConfigError(f"labels: unknown label set {name!r} (known: {', '.join(_NAMED_SETS)})")


@cache
def _named(name: str) -> LabelSet:
    return LabelSet(tuple(_NAMED_SETS[name]()), source=name)


def shown_names(labels: LabelSet | None, num_classes: int) -> list[str]:
    """The names to show for ``num_classes`` outputs: the model's own (when they fit the head and are not
    placeholders), else ImageNet-1k's for 1000 classes, else ``class_<i>``."""
    fitting = labels.for_head(num_classes) if labels is not None else None
    if fitting is not None and not fitting.placeholder:
        return list(fitting.names)
    if num_classes == 1000:
        return imagenet_labels()
    return placeholders(num_classes)


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
        except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: brackets nested past Python's limit
            raise LabelError(f"{p}: not valid JSON ({first_line(e)})") from None
        labels = _labels_from_json(data, p)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        labels = [line.split("\t", 1)[-1].strip() for line in lines]
    if not labels:
        raise LabelError(f"{p}: no labels found")
    return labels


def names_by_index(mapping: Mapping[Any, Any], source: object) -> list[str]:
    """``{index: name}`` (an ``id2label``: keys ints or digit strings) -> the names in class-index order.

    The one rule for every index -> name map (``--labels`` JSON, HF ``config.json``'s ``id2label``): keys are the
    class indices ``0..N-1``, each once, without gaps; anything else raises :class:`LabelError` naming ``source``
    (never renumbered by position: index 2 of ``{0, 2}`` is not class 1).
    """
    index: dict[int, str] = {}
    for key, name in mapping.items():
        try:
            i = int(key) if not isinstance(key, (bool, float)) else None
        except (TypeError, ValueError):
            i = None
        if i is None or str(key).strip() != str(i) or i in index:
            raise LabelError(f"{source}: keys must be class indices 0, 1, 2, ... each once (got {str(key)[:40]!r})")
        index[i] = str(name)
    missing = sorted(set(range(len(index))) - set(index))
    if missing:
        raise LabelError(
            f"{source}: class indices must be 0..{len(index) - 1} without gaps (index {missing[0]} is missing)"
        )
    return [index[i] for i in range(len(index))]


def check_label_count(count: int, num_classes: int, source: object) -> None:
    """The one rule for names given for a model's outputs (``--labels``, a weight file's names): exactly one per
    class, else :class:`LabelError` naming ``source``."""
    if count != num_classes:
        raise LabelError(f"{source}: has {count} labels but the model has {num_classes} classes")


def _labels_from_json(data: Any, path: Path) -> list[str]:
    if isinstance(data, dict) and "id2label" in data:
        data = data["id2label"]
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    if isinstance(data, dict):
        return names_by_index(data, path)
    raise LabelError(f"{path}: expected a JSON list of names or an index -> name mapping")


def resolve_labels(
    num_classes: int,
    model_labels: LabelSet | Sequence[str] | str | None = None,
    label_file: str | os.PathLike[str] | Sequence[str] | None = None,
) -> list[str]:
    """Names for ``num_classes`` outputs (see the module docstring for the precedence).

    ``model_labels``: the weights' own names (``PretrainedSpec.labels``; a list of names or ``"imagenet-1k"``
    also do). ``label_file`` may also be a list of names. A user list of the wrong length raises
    :class:`LabelError`.
    """
    if label_file is not None:
        if isinstance(label_file, (str, os.PathLike)):
            labels, source = load_label_file(label_file), str(label_file)
        else:
            labels, source = [str(x) for x in label_file], "labels"
        check_label_count(len(labels), num_classes, source)
        return labels
    return shown_names(LabelSet.parse(model_labels), num_classes)


def check_class_indices(labels: Any, num_classes: int, what: str = "labels") -> None:
    """The one rule for training targets in every front-end's trainer: integer class indices in
    ``[0, num_classes)``. A float is truncated and an out-of-range index becomes an all-zero one-hot target (or an
    error deep in a kernel), both giving a finite, wrong loss: refused here in one :class:`DataError` line.

    ``labels``: anything ``numpy.asarray`` takes (a numpy array, a list, a CPU tensor).
    """
    import numpy as np

    y = np.asarray(labels)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: dtype {y.dtype}; expected integer class indices in [0, {num_classes})")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(f"{what}: {bad.flat[0]} is out of range for a {num_classes}-class model")

"""Loading weights into a model, written once for every front-end (the step after :func:`~cvt.core.weights.resolve`).

A front-end supplies only what is its own: its variables as ``{native name: Slot(shape, layout kind)}`` and the
assignment of the arrays :func:`match` hands back. Everything else is here: the head rule (a file's head of
another class count becomes a fresh head, a model without a head drops the file's), the tensors that may be
absent (:data:`OPTIONAL_TENSORS`), the layout change (:mod:`.layouts`), and the fit report in one vocabulary
(``mis-shaped`` / ``missing`` / ``unexpected``, shapes in PyTorch's layout) whether the model is PyTorch, Keras or
Flax. timm's ``load_pretrained`` is the same idea: the classifier adaptation is written once for every model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import WeightsError
from .layouts import from_torch, torch_shape

OPTIONAL_TENSORS = ("num_batches_tracked",)  # not every writer keeps it; it never changes a forward pass
Shape = tuple[int, ...]


def is_optional(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in OPTIONAL_TENSORS


def head_classes(state_dict: Mapping[str, Any]) -> int:
    """The class count of a native state dict's head (``head.weight``: ``(classes, width)``); 0 without a head."""
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if head is not None and len(head.shape) == 2 else 0


@dataclass
class FitReport:
    """What comparing a file's tensors with a model's found (native names; shapes in PyTorch's layout)."""

    missing: list[str] = field(default_factory=list)  # the model has it, the file does not
    unexpected: list[str] = field(default_factory=list)  # the file has it, the model does not
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # (name, file shape, model shape)
    notes: list[str] = field(default_factory=list)  # a new or dropped head

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def _kinds(self) -> list[tuple[str, list[str]]]:
        shaped = [f"{name}: file {f} vs model {m}" for name, f, m in self.mismatched]
        return [("mis-shaped", shaped), ("missing", self.missing), ("unexpected", self.unexpected)]

    def counts(self, total: int | None = None) -> str:
        """``2 mis-shaped, 1 missing of 120 tensors``."""
        text = ", ".join(f"{len(items)} {label}" for label, items in self._kinds() if items)
        return text + (f" of {total} tensors" if total is not None else "")

    def first(self) -> str:
        """The first problem (mis-shaped before missing before unexpected)."""
        return next((items[0] for _, items in self._kinds() if items), "")

    def short(self) -> str:
        """Each kind's count and first name: what one error line can hold."""
        parts = [f"{len(items)} {label} (first: {items[0]})" for label, items in self._kinds() if items]
        return "; ".join(parts) or "all tensors matched"

    def __str__(self) -> str:
        lines = []
        for label, items in self._kinds():
            if items:
                shown = items[:8] + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
                lines.append(f"{len(items)} {label}: " + "; ".join(shown))
        return " | ".join(lines + self.notes) or "all tensors matched"


def fit_report(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> FitReport:
    """Compare ``{native name: PyTorch-layout shape}`` of a model (``expected``) with a file's (``found``).

    An optional tensor (:data:`OPTIONAL_TENSORS`) is neither missing nor unexpected. Order follows ``expected``
    (the first lines are the first layers).
    """
    report = FitReport()
    for name, shape in expected.items():
        if name not in found:
            if not is_optional(name):
                report.missing.append(name)
        elif tuple(found[name]) != tuple(shape):
            report.mismatched.append((name, tuple(int(s) for s in found[name]), tuple(int(s) for s in shape)))
    report.unexpected = [name for name in found if name not in expected and not is_optional(name)]
    return report


def adapt_head(state_dict: Mapping[str, Any], model_classes: int) -> tuple[dict[str, Any], list[str]]:
    """The file's tensors a model of ``model_classes`` outputs takes, and what changed about the head.

    A file's head of another class count is left out (the model keeps its fresh head: fine-tuning); a model
    without a head (``num_classes=0``) drops the file's. Neither is an error; each gives one note.
    """
    file_classes = head_classes(state_dict)
    if not file_classes or file_classes == model_classes:
        return dict(state_dict), []
    note = (
        "head dropped: model has num_classes=0"
        if model_classes == 0
        else f"new head: file has {file_classes} classes, model {model_classes}"
    )
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}, [note]


def dtype_name(value: Any) -> str:
    """The element type of a numpy array or framework tensor, as its framework spells it (``int32``, ``bool``)."""
    dtype = getattr(value, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else type(value).__name__


def is_floating(value: Any) -> bool:
    """True for a floating-point array or tensor (float16/32/64, bfloat16 from torch or ml_dtypes)."""
    if hasattr(value, "is_floating_point"):  # a torch tensor, without importing torch here
        return bool(value.is_floating_point())
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    # ml_dtypes' bfloat16 / float8 (JAX's) are numpy kind "V": names tell them apart from records
    return np.dtype(dtype).kind == "f" or "float" in str(dtype)


def check_dtypes(state_dict: Mapping[str, Any], source: object) -> None:
    """Refuse a tensor whose values are no floating-point numbers where the model's parameter is one.

    Every CvT tensor is floating-point but the optional counters (:data:`OPTIONAL_TENSORS`); a ``bool`` or
    ``int32`` tensor there was cast to float silently by all three front-ends (a file that lies about its values).
    Raises :class:`WeightsError` naming the file and the first such tensor.
    """
    for name, value in state_dict.items():
        if not is_optional(name) and not is_floating(value):
            raise WeightsError(
                f"{source}: tensor {name} holds {dtype_name(value)} values; CvT parameters are floating-point "
                "(float16, bfloat16, float32 or float64)"
            )


@dataclass(frozen=True)
class Slot:
    """One variable of a front-end's model: its shape as the framework holds it and its layout kind."""

    shape: Shape
    layout: str = "same"  # a kind of :mod:`cvt.core.layouts`

    @property
    def torch_shape(self) -> Shape:
        return torch_shape(self.layout, self.shape)


def match(
    slots: Mapping[str, Slot], state_dict: Mapping[str, Any], *, source: object, strict: bool = True
) -> tuple[dict[str, np.ndarray], FitReport]:
    """The arrays to assign, in each slot's own layout, and the report; the front-end assigns them.

    ``state_dict``: native names, PyTorch layouts (numpy or framework tensors). The head follows
    :func:`adapt_head`. With ``strict`` a report that is not ok raises :class:`WeightsError` (one line: counts and
    the first problem); without it only the tensors that fit come back. Absent optional tensors are not in the
    result: the front-end keeps (or zeroes) its own.
    """
    check_dtypes(state_dict, source)
    model_classes = slots["head.weight"].torch_shape[0] if "head.weight" in slots else 0
    tensors, notes = adapt_head(state_dict, model_classes)
    expected = {name: slot.torch_shape for name, slot in slots.items()}
    if notes:  # the model's fresh head is not missing from the file
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    report = fit_report(expected, {k: tuple(v.shape) for k, v in tensors.items()})
    report.notes = notes
    if strict and not report.ok:
        raise WeightsError(f"{source}: weights do not fit this architecture: {report.short()}")
    bad = {name for name, _, _ in report.mismatched}
    values = {
        name: from_torch(slots[name].layout, _numpy(tensors[name]))
        for name in expected
        if name in tensors and name not in bad
    }
    return values, report


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    return np.asarray(value)

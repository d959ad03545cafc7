"""Importing Keras with a usable backend, or one line that says how to get one.

Keras picks its backend at import: ``KERAS_BACKEND``, else ``backend`` in ``$KERAS_HOME/keras.json`` (default
``~/.keras/keras.json``), else ``tensorflow``. On a JAX-only install without the variable, ``import keras`` dies
deep inside with ``No module named 'tensorflow'``; with a misspelt ``KERAS_BACKEND`` it raises ``ValueError``.
:func:`import_keras` turns both into :class:`KerasBackendError` (an ``ImportError``), naming the variable, the
backend Keras tried and the frameworks that are installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

from ..core.errors import MissingDependencyError, UsageError, first_line

FRAMEWORKS = ("tensorflow", "jax", "torch")  # Keras 3's backends that cvt supports (and tests)


class KerasBackendError(MissingDependencyError):
    """Keras is installed but cannot load its backend (an ``ImportError``; one line)."""


def installed_frameworks() -> list[str]:
    """The Keras backends among :data:`FRAMEWORKS` that are installed (found by the import system)."""
    found = []
    for name in FRAMEWORKS:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except (ImportError, ValueError):  # a broken or blocked package counts as absent
            continue
    return found


def chosen_backend() -> tuple[str, str]:
    """``(backend, where the choice came from)`` by Keras' own rule (module docstring)."""
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env, "KERAS_BACKEND"
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        backend = json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        backend = None
    if isinstance(backend, str) and backend:
        return backend, f"{home / 'keras.json'} (KERAS_BACKEND unset)"
    return "tensorflow", "Keras' default (KERAS_BACKEND unset)"


def backend_message(problem: str) -> str:
    """The one line of :class:`KerasBackendError`."""
    backend, origin = chosen_backend()
    have = installed_frameworks()
    usable = [f for f in have if f != backend]
    hint = f"set KERAS_BACKEND={usable[0]}" if usable else "pip install jax (or tensorflow, or torch)"
    return (
        f"cvt.keras: Keras cannot load its backend {backend!r} (from {origin}): {problem}; "
        f"installed frameworks: {', '.join(have) or 'none of tensorflow, jax, torch'}; {hint}"
    )


def import_keras() -> ModuleType:
    """``import keras`` with the errors above turned into one :class:`KerasBackendError` line."""
    if importlib.util.find_spec("keras") is None:
        raise MissingDependencyError("cvt.keras needs keras, which is not installed: pip install 'cvt-models[keras]'")
    try:
        return importlib.import_module("keras")
    except ImportError as e:
        raise KerasBackendError(backend_message(first_line(e))) from None
    except ValueError as e:  # "Unable to import backend : bogus"
        raise KerasBackendError(backend_message(first_line(e))) from None


def check_tensorflow_backend(what: str, backend: str | None = None) -> None:
    """Refuse in one line an export that only Keras' TensorFlow backend can make (SavedModel, LiteRT) when another
    backend is chosen: installing a package would not help, the backend must change. ``backend``: the one Keras
    runs (``keras.backend.backend()``) once imported; ``None``: the one it would choose (:func:`chosen_backend`)."""
    origin = "Keras runs"
    if backend is None:
        backend, origin = chosen_backend()
    if backend != "tensorflow":
        raise UsageError(
            f"{what}: needs Keras' TensorFlow backend, but the backend is {backend!r} (from {origin}); "
            "run it with KERAS_BACKEND=tensorflow"
        )

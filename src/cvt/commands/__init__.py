"""CLI verbs. Every library error is a :class:`~cvt.core.errors.CvtError` carrying its exit status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..core.errors import CvtError, UsageError

UserError = CvtError  # a failure caused by the user's inputs (exit status 1): one line, no traceback

__all__ = ["UsageError", "UserError", "user_errors"]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn environment errors on user paths into :class:`UserError` (library errors pass through)."""
    try:
        yield
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: no such file or directory") from None
    except OSError as e:
        raise UserError(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}") from None

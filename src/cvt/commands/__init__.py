"""CLI verbs. Library errors are turned into :class:`UserError` / :class:`UsageError` here, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..config import ConfigError
from ..registry import UnknownModelError
from ..weights.convert import ConversionError
from ..weights.io import WeightsError


class UserError(Exception):
    """A failure caused by the user's inputs (exit status 1): printed as one line, no traceback."""


class UsageError(UserError):
    """Arguments that make no sense (exit status 2)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise the library's input errors as :class:`UserError` / :class:`UsageError`."""
    try:
        yield
    except (UnknownModelError, ConfigError) as e:
        raise UsageError(str(e)) from None
    except (WeightsError, ConversionError) as e:
        raise UserError(str(e)) from None
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: no such file or directory") from None
    except OSError as e:
        raise UserError(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}") from None

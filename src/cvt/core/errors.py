"""The error types of the whole library, in one place.

Every error caused by a user's input (a file, a name, an argument, a recipe) derives from :class:`CvtError`:
its message is one line that starts with what is wrong (the path, the field, the argument), and its
``exit_code`` is what the ``cvt`` command returns for it (1: an input could not be used; 2: a usage error).
The command line maps them in one line; Python users catch ``CvtError`` (or the ``ValueError`` /
``KeyError`` each also is).
"""

from __future__ import annotations


class CvtError(Exception):
    """An input that cannot be used; one line, no traceback needed."""

    exit_code = 1


class UsageError(CvtError, ValueError):
    """Arguments that make no sense together (exit status 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid architecture or training configuration; the message names the offending field."""


class UnknownModelError(UsageError, KeyError):
    """A model name that no registry entry matches."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class WeightsError(CvtError, ValueError):
    """A weight file that cannot be used; the message starts with the path and says what is wrong."""


class ConversionError(WeightsError):
    """A state dict that no key-rule table explains."""


class ImageError(CvtError, ValueError):
    """An input that is not a usable image; the message starts with the path and gives the reason."""


class LabelError(CvtError, ValueError):
    """An unusable label file; the message starts with the path."""


class DataError(CvtError, ValueError):
    """A data set that cannot be used (no images, unknown classes, a malformed list ...)."""


class WriteError(CvtError):
    """A file that cannot be written; the message names the destination and the reason (disk full ...)."""


class MissingDependencyError(CvtError, ImportError):
    """A feature needs an optional package (an extra) that is not installed."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit`` chars.

    An exception re-raised from a worker process (PyTorch's DataLoader: ``Caught X in DataLoader worker process
    0.`` then ``Original Traceback ...``) gives its original message: the traceback's last line.
    """
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    if len(text) > 1 and "Original Traceback" in text[1]:
        last = text[-1]
        name = type(e).__name__
        # the last line is "module.path.Name: message"; keep the message
        head, sep, rest = last.partition(": ")
        text = [rest if sep and head.rsplit(".", 1)[-1] == name else last]
    return text[0][:limit] if text else type(e).__name__


def require(module: str, extra: str, feature: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra to install when ``module`` is not importable."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{feature} needs {module}, which is not installed ({first_line(e)}): pip install 'cvt-models[{extra}]'"
        ) from None


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a note says how long it was), for one-line error messages.

    A recipe value can be a million-element list (YAML aliases) and a metadata field a megabyte string: the error
    line names the field and shows the value's start, never all of it. Containers are shortened without building
    their whole repr (the repr of an expanded alias bomb would itself take minutes).
    """
    import reprlib

    shortener = reprlib.Repr()  # bounded: at most a few items per level and a few levels, whatever the value holds
    shortener.maxlevel, shortener.maxstring, shortener.maxother = 4, limit, limit
    shortener.maxlong = limit
    try:
        text = shortener.repr(value)
    except (RecursionError, ValueError):  # a self-referencing container; a huge int's repr (Python's digit limit)
        return f"<{type(value).__name__}>"
    text = " ".join(text.split())  # one line
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} chars)"

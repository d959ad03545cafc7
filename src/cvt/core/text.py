"""Text that reaches a terminal or a JSON / CSV file: the one place that makes it safe. No framework.

Class names come from files anyone can write (a weight file's metadata, ``--labels``, a folder's names), and
paths come from the file system, which allows any bytes but ``/`` and NUL. Two rules, used by every output:

- :func:`utf8_text`: a string that encodes as UTF-8. Python decodes a non-UTF-8 file name with
  ``surrogateescape`` (byte ``0xE9`` becomes the lone surrogate ``\\udce9``), which no UTF-8 writer accepts; such a
  byte is written as the text ``\\xe9`` instead (what ``os.fsencode`` would give back, shown readably). JSON and CSV
  output is therefore always valid UTF-8.
- :func:`escape_controls`: :func:`utf8_text` with every control character (C0, DEL, C1, the bidirectional
  overrides, line and paragraph separators) written as a visible escape (``\\x1b``, ``\\u202e``), so a label cannot
  recolour, retitle or rewrite the terminal (ESC / OSC sequences) or reorder what is shown. Table output uses it.
"""

from __future__ import annotations

import json
from typing import Any

# what a terminal or a bidi-aware viewer acts on beyond C0/C1: Arabic letter mark, LRM/RLM, embeddings and
# overrides, isolates, and the Unicode line / paragraph separators
_FORMAT_CONTROLS = frozenset([0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def utf8_text(text: str) -> str:
    """``text`` as a string that encodes as UTF-8: lone surrogates (undecodable bytes of a file name) become
    ``\\xNN`` text for the byte they stand for (``\\uDXXX`` text for one that stands for no byte)."""
    try:
        text.encode("utf-8")
        return text  # the common case: nothing to do
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # back to the file system's bytes
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (from a JSON "\ud800", say)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _is_control(code: int) -> bool:
    return code < 0x20 or 0x7F <= code < 0xA0 or code in _FORMAT_CONTROLS


def escape_controls(text: str) -> str:
    """``text`` for a terminal: :func:`utf8_text`, and each control character as ``\\xNN`` / ``\\uNNNN`` text."""
    text = utf8_text(text)
    if not any(_is_control(ord(c)) for c in text):
        return text
    return "".join(_escape(c) if _is_control(ord(c)) else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def utf8_json(value: Any) -> Any:
    """``value`` (JSON-ready: dicts, lists, strings, numbers) with every string, keys too, made :func:`utf8_text`."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {utf8_text(k) if isinstance(k, str) else k: utf8_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [utf8_json(v) for v in value]
    return value


def dumps_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`utf8_json` ``(value)``: text that is valid JSON and valid UTF-8 whatever the names.

    JSON itself escapes control characters (and, by default, all non-ASCII as ``\\uXXXX``).
    """
    return json.dumps(utf8_json(value), **kwargs)

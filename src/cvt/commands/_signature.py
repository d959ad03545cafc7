"""A typed function -> an argparse sub-command: the function's parameters ARE the command's options.

So an option's default and its ``--help`` cannot drift from the function (and a verb that takes a default from
the library writes ``batch_size: int = default_of(Predictor, "batch_size")``). The rules, one per form:

* positional-or-keyword parameters are positional arguments; keyword-only ones are options
  (``batch_size`` -> ``--batch-size``);
* a type (``int``, ``float``, ``str``, ``Path`` ...) converts the text; ``T | None`` is ``T`` with default ``None``;
* ``Literal["a", "b"]`` gives ``choices`` (argparse's one-line error lists them);
* ``bool``: default ``False`` -> ``--name``; default ``True`` -> ``--no-name``, whose help is "no " + the doc
  (unless ``Arg`` names the flag);
* ``list[T]`` / ``tuple[T, ...]`` take one or more values (``nargs="+"``);
* the help of a parameter is its entry in the Google-style ``Args:`` section of the docstring, plus
  ``(default: X)``; the docstring's text before ``Args:`` is the command's description.

``Annotated[T, Arg(...)]`` adds what a type cannot say: other flags, a metavar, choices from a library
constant, a lower bound, or that a repeated option adds up (``--set a=1 --set b=2``).
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

__all__ = ["Arg", "add_function_arguments", "call", "default_of"]


class Arg:
    """What a parameter's type cannot say about its option (``Annotated[int | None, Arg("-r", metavar="R")]``).

    Args:
        flags: ``"-x"`` adds a short flag; ``"--name"`` replaces the flag made from the parameter's name.
        metavar: the value's name in ``--help``.
        choices: the accepted values (for a library constant; a ``Literal`` type says it inline).
        minimum: the smallest accepted number (argparse refuses less, in one line).
        repeat: for a list: a repeated option adds to the list instead of replacing it.
    """

    def __init__(
        self,
        *flags: str,
        metavar: str | None = None,
        choices: Sequence[Any] | None = None,
        minimum: float | None = None,
        repeat: bool = False,
    ):
        self.flags, self.metavar, self.choices, self.minimum, self.repeat = flags, metavar, choices, minimum, repeat


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``fn`` (a function or a class): a verb's default, read from the library."""
    return inspect.signature(fn).parameters[name].default


def parameter_help(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """``(description, {parameter: help})`` from a Google-style docstring (entries of ``Args:``, joined lines)."""
    head, *rest = re.split(r"^Args:$", inspect.getdoc(fn) or "", maxsplit=1, flags=re.M)
    helps: dict[str, str] = {}
    name = ""
    for line in "".join(rest).splitlines():
        if line and not line[0].isspace():
            break  # the next section (Returns:, Raises: ...)
        entry = re.match(r" {4}(\w+): ?(.*)", line)
        if entry:
            name, helps[entry[1]] = entry[1], entry[2]
        elif name and line.strip():
            helps[name] += " " + line.strip()
    return " ".join(head.split()), helps


def add_function_arguments(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> argparse.ArgumentParser:
    """One argument per parameter of ``fn`` on ``parser`` (rules: the module docstring); :func:`call` runs it."""
    description, helps = parameter_help(fn)
    parser.description = description or None
    hints = typing.get_type_hints(fn, include_extras=True)
    for p in inspect.signature(fn).parameters.values():
        flags, options = _argument(p, hints[p.name], helps.get(p.name, ""))
        parser.add_argument(*flags, **options)
    parser.set_defaults(_function=fn)
    return parser


def call(namespace: argparse.Namespace) -> Any:
    """Call the function :func:`add_function_arguments` registered, with the parsed values of its parameters."""
    fn = namespace._function
    return fn(**{name: getattr(namespace, name) for name in inspect.signature(fn).parameters})


def _argument(p: inspect.Parameter, hint: Any, doc: str) -> tuple[list[str], dict[str, Any]]:
    """``(flags, add_argument keywords)`` for parameter ``p`` annotated ``hint`` and documented ``doc``."""
    arg = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Arg)), Arg())
    kind = _without_none(typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint)
    default = None if p.default is p.empty else p.default
    named = next((f for f in arg.flags if f.startswith("--")), None)
    long = named or "--" + p.name.replace("_", "-")
    shorts = [f for f in arg.flags if not f.startswith("--")]
    if kind is bool:  # a switch: --name turns on what is off by default, --no-name turns off what is on
        flag = long if named or not default else "--no-" + p.name.replace("_", "-")
        text = f"no {doc}" if default and not named else doc
        return [flag, *shorts], {"action": "store_false" if default else "store_true", "dest": p.name, "help": text}
    options: dict[str, Any] = {"metavar": arg.metavar, "choices": arg.choices}
    if typing.get_origin(kind) is Literal:
        options["choices"] = typing.get_args(kind)
        kind = type(options["choices"][0])
    if typing.get_origin(kind) in (list, tuple, Sequence):
        options["nargs"] = "+"
        if arg.repeat:  # --set a=1 --set b=2 == --set a=1 b=2
            options["action"], default = "extend", list(default or ())
        kind = typing.get_args(kind)[0]
    options["type"] = _bounded(kind, arg.minimum)
    if default is not None and default != () and default != []:
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        doc = f"{doc} (default: {shown})".strip()
    options["help"] = doc.replace("%", "%%")  # argparse formats help with %
    if p.kind is p.KEYWORD_ONLY:
        if not (arg.metavar or options["choices"]):  # named after the flag, as argparse names it after dest
            options["metavar"] = long[2:].replace("-", "_").upper()
        return [long, *shorts], {**options, "dest": p.name, "default": default, "required": p.default is p.empty}
    if p.default is not p.empty:
        options["nargs"] = "*" if "nargs" in options else "?"
    return [p.name], {**options, "default": default}


def _without_none(kind: Any) -> Any:
    """``T | None`` -> ``T`` (the ``None`` is the parameter's default)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [k for k in typing.get_args(kind) if k is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _bounded(kind: Callable[[str], Any], minimum: float | None) -> Callable[[str], Any]:
    """``kind`` as an argparse ``type``, refusing values below ``minimum`` (one line, exit status 2)."""
    if minimum is None:
        return kind

    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names it in "invalid int value: 'x'"
    return parse

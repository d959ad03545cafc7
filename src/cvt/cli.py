"""The ``cvt`` command: a thin argparse front end over the library.

Each verb lives in ``cvt/commands/<verb>.py`` with ``register(subparsers)`` that adds its parser and sets
``func(args) -> int``. Exit status: 0 success, 1 some inputs failed, 2 usage error. User errors print one
line (``cvt <verb>: error: ...``) and no traceback; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .core.errors import CvtError

# Order = order in --help. Each module registers one or more verbs.
COMMAND_MODULES = [
    "cvt.commands.models",
    "cvt.commands.convert",
    "cvt.commands.predict",
    "cvt.commands.train",
    "cvt.commands.eval",
    "cvt.commands.export",
    "cvt.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cvt", description="CvT (Convolutional vision Transformer): models, weights, prediction, training."
    )
    parser.add_argument("--version", action="version", version=f"cvt-torch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"cvt {args.command}: interrupted", file=sys.stderr)
        return 130
    except CvtError as e:
        if args.debug:
            raise
        print(f"cvt {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

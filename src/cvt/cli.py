"""The ``cvt`` command: one typed function per verb, its options generated from its signature.

Each verb is a function ``run_<verb>(...) -> int`` in ``cvt/commands/<module>.py`` whose parameters are the
verb's options (see :mod:`cvt.commands._signature`). Only the verb being run is imported, so ``cvt list`` and
``cvt --help`` need no torch. Exit status: 0 success, 1 some inputs failed, 2 usage error. Errors print one line
(``cvt <verb>: error: ...``) and no traceback; ``--debug`` shows tracebacks.

A reader that stops early (``cvt list --json | head -1``) ends the command quietly with status 0, as a closed pipe is
the reader's choice, not a failure (Unix tools killed by SIGPIPE report 141, which ``set -o pipefail`` scripts then
treat as an error; we do not). Library code reports through :mod:`logging` (loggers under ``cvt``); the command shows
those records on stderr as one line each, warnings and up (``--debug``: everything).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Collection, Iterator, Sequence
from typing import NoReturn

from .commands._signature import add_function_arguments, call
from .core.errors import CvtError, first_line
from .core.files import reason

# verb -> (function, one-line help); the order of --help.
VERBS = {
    "list": ("models:run_list", "list architectures and released checkpoints"),
    "info": ("models:run_info", "parameters, MACs (attention included) and feature shapes of a model"),
    "convert": (
        "convert:run_convert",
        "convert weights between layouts (official .pth, HF directory, native .safetensors)",
    ),
    "predict": ("predict:run_predict", "classify images (top-k ImageNet or custom labels)"),
    "train": (
        "train:run_train",
        "train or fine-tune a CvT from a recipe (default: a small CvT on scikit-learn's digits)",
    ),
    "eval": (
        "eval:run_eval",
        "accuracy of a model on a labelled image folder, list file or the digits held-out split",
    ),
    "export": ("export:run_export", "export to ONNX, TorchScript or a torch.export program (verified against eager)"),
    "bench": ("bench:run_bench", "speed and memory against HF transformers' CvT (same weights, interleaved runs)"),
    "serve": ("serve:run_serve", "an HTTP inference server (dynamic batching, metrics) with a web page"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the library's error shape: one line, no usage block (``--help`` shows that), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(verbs: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``verbs``, only those verbs get their options (the others are only listed)."""
    from . import __version__

    parser = _Parser(
        prog="cvt", description="CvT (Convolutional vision Transformer): models, weights, prediction, training."
    )
    parser.add_argument("--version", action="version", version=f"cvt-models {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (target, summary) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=summary)
        if verbs is None or verb in verbs:
            module, function = target.split(":")
            add_function_arguments(verb_parser, getattr(importlib.import_module(f"cvt.commands.{module}"), function))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cvt`` command line; the exit status (see the module docstring)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a reader gone away shows here, not as a traceback while the interpreter exits
        return status
    except BrokenPipeError:
        _discard_stdout()
        return 0


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an in-process caller's stdout)
        pass


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # NOTE the root options take no values, so the first word that is not an option names the verb
    verb = next((a for a in argv if not a.startswith("-")), "")
    try:
        parser = build_parser(verbs=[verb])
    except ImportError as e:  # a verb of the torch extra on a core-only install
        print(
            f"cvt {verb}: error: needs {e.name}, which is not installed: pip install 'cvt-models[torch]'",
            file=sys.stderr,
        )
        return 1
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed: its status, also in-process
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        with _library_messages(args.debug):
            return int(call(args) or 0)
    except KeyboardInterrupt:
        print(f"cvt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # the reader closed the pipe: main ends quietly
    except (CvtError, OSError) as e:
        if args.debug:
            raise
        print(f"cvt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code if isinstance(e, CvtError) else 1
    except Exception as e:  # not foreseen by any check above: still one line; the traceback with --debug
        if args.debug:
            raise
        print(
            f"cvt {args.command}: error: {type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _library_messages(debug: bool) -> Iterator[None]:
    """Show the records of cvt's loggers (``cvt.*``) on stderr as one line each while a verb runs, whatever
    handlers the process already has (``basicConfig`` does nothing when the root logger has one, as under a test
    runner or an application calling :func:`main`). They do not also propagate: that would print them twice."""
    logger = logging.getLogger("cvt")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _one_line(e: Exception) -> str:
    if isinstance(e, OSError):  # the environment (a path, the disk) rather than a bug: one line as well
        return f"{e.filename}: {reason(e)}" if e.filename else reason(e)
    return first_line(e, limit=2000)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

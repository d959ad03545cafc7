"""The verbs of the ``cvt`` command: one typed function each, ``run_<verb>(...) -> exit status``.

A verb's parameters are its options (:mod:`cvt.commands._signature` turns the signature and the docstring into
the argparse sub-command), so a verb holds only what the command line adds to the library call: expanding
inputs, choosing defaults for a terminal, and formatting the output. Every library error is a
:class:`~cvt.core.errors.CvtError` that :func:`cvt.cli.main` prints in one line; verbs do not catch them.
"""

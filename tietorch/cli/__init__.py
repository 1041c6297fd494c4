"""The ``tietorch`` command (also ``python -m tietorch``): ``demo``, ``show``, ``check``, ``bench``.

``main(argv)`` returns the exit code: 0 on success, 1 when a check fails, 2 for usage errors
(unknown ties, bad shapes, shapes a tie refuses, imports that fail). Errors go to stderr.

A ``TIE`` argument is either ``module:attr`` (a user's tie, imported; the attribute may be a
``Tie`` instance, a ``Tie`` subclass or a zero-argument callable returning one; the module may
also be a path ``file.py``) or an expression over the built-in ties, which is parsed, not
evaluated: only calls of tietorch's tie classes with literal arguments, combined with ``&``.

One module per job: ``_expression`` (the safe parser of tie expressions and shapes), ``_user``
(importing ``MODULE:ATTR``), ``_limits`` (size limits, refusals as usage errors), one module per
command (``_demo``, ``_show``, ``_check``, ``_bench``) and ``_parser`` (arguments, help). The
text and picture of a layout are library functions: :func:`tietorch.render_layout` and
:func:`tietorch.plot_layout`.

Example:
    >>> main(["show", "Antisymmetric()", "--shape", "2,2"])  # doctest: +ELLIPSIS
    tie              Antisymmetric(dims=(0, 1))
    ...
    0
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from ._errors import CLIError
from ._expression import parse_shape, parse_tie
from ._parser import PROG, build_parser
from ._user import resolve_tie

__all__ = ["CLIError", "build_parser", "main", "parse_shape", "parse_tie", "resolve_tie"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tietorch`` command with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exit_:  # --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CLIError as error:
        sys.stdout.flush()
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return error.code
    except BrokenPipeError:  # e.g. `tietorch show ... | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # keeps the final flush from failing again
        return 1

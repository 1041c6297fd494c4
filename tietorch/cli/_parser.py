"""The argument parser of the ``tietorch`` command: subcommands, their help and examples."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import tietorch

from ._bench import cmd_bench
from ._check import cmd_check
from ._demo import cmd_demo
from ._expression import parse_shape
from ._show import cmd_show

__all__ = ["PROG", "build_parser"]

PROG = "tietorch"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilog as written."""


_TIE_HELP = (
    "a built-in tie expression (e.g. SymmetricFlip, \"KernelSymmetry('D4')\", "
    '"Symmetric() & Toeplitz()") or MODULE:ATTR naming your own tie'
)

_EPILOGS = {
    "main": """\
examples:
  tietorch demo
  tietorch show SymmetricFlip --shape 4,4,3,3
  tietorch check my_ties:MyTie --shape 4,4,3,3
  tietorch <command> --help
""",
    "demo": """\
examples:
  tietorch demo                      # about 5 s of training, then the checks
  tietorch demo --seconds 20 --seed 1
  tietorch demo --out runs/demo      # keep the checkpoint (runs/demo/tietorch_demo.pt)

exit code 0 when every constraint holds exactly and the reloaded model gives identical
outputs, 1 otherwise.
""",
    "show": """\
TIE is an expression over the built-in ties (parsed, not evaluated: tie classes called with
literal arguments, combined with &), or MODULE:ATTR for your own tie (a Tie instance, a Tie
subclass or a zero-argument function returning one; MODULE may be a file.py).

examples:
  tietorch show SymmetricFlip --shape 2,2,3,3
  tietorch show "SymmetricFlip(sign=-1)" --shape 3,3,3,3
  tietorch show "KernelSymmetry('D4')" --shape 5,5
  tietorch show "Symmetric() & Toeplitz()" --shape 6,6
  tietorch show my_ties:MyTie --shape 4,4,3,3 --png my_tie.png   # needs tietorch[plot]
""",
    "check": """\
Runs tietorch.testing.check_tie (needs Hypothesis: pip install "tietorch[testing]"): the
layout is well formed, satisfies the tie's declared key/relations, is minimal (dense rank),
projects orthogonally and passes gradients. Exit code 0 if it passes, 1 if not, 2 for usage
errors.

examples:
  tietorch check my_ties:MyTie                        # shapes derived from check_shape
  tietorch check my_ties:make_tie --shape 4,4,3,3 --shape 2,2,5,5
  tietorch check path/to/ties.py:MY_TIE --max-examples 500
  tietorch check "my_ties:NeedsArgs(2, sign=-1)"       # literal arguments, parsed with ast
""",
    "bench": """\
Runs `python -m benchmarks` in the source checkout the package is installed from (the
benchmarks/ folder next to tietorch/); an install from a wheel has none.

examples:
  tietorch bench --quick
  tietorch bench
""",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tietorch`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tietorch: declare which entries of a PyTorch weight are equal; train only "
        "the free parameters.",
        epilog=_EPILOGS["main"],
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tietorch {tietorch.__version__} (torch {torch.__version__})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EPILOGS[name],
            formatter_class=_Formatter,
        )

    demo = command(
        "demo", "Tie a small CNN, train it for a few seconds, check the ties, save and reload."
    )
    demo.add_argument(
        "--seconds", type=_seconds, default=5.0, help="training time in seconds (default: 5)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of data, model and batches")
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the checkpoint in DIR (default: a temporary directory)",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch threads (default: 1, fastest for this tiny model)",
    )
    demo.set_defaults(func=cmd_demo)

    show = command(
        "show",
        "Show a tie's layout on a shape: entries, free parameters, forced zeros, class "
        "sizes and the index map.",
    )
    show.add_argument("tie", metavar="TIE", help=_TIE_HELP)
    show.add_argument(
        "--shape", type=parse_shape, required=True, help="the tensor's shape, e.g. 4,4,3,3"
    )
    show.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="FILE",
        help="also draw the class map to FILE (needs matplotlib)",
    )
    show.set_defaults(func=cmd_show)

    check = command("check", "Property-test a tie with tietorch.testing.check_tie.")
    check.add_argument(
        "tie",
        metavar="MODULE:ATTR",
        help="your tie (a Tie, a Tie subclass or a zero-argument function "
        "returning one); built-in expressions work too",
    )
    check.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        default=None,
        help="a shape to check on (repeatable; default: small shapes the tie accepts)",
    )
    check.add_argument(
        "--max-examples",
        type=_positive_int,
        default=40,
        metavar="N",
        help="Hypothesis examples to try, each checking several shapes (default: 40, as check_tie)",
    )
    check.set_defaults(func=cmd_check)

    bench = command("bench", "Run the benchmarks (from a source checkout).")
    bench.add_argument("--quick", action="store_true", help="a short run")
    bench.set_defaults(func=cmd_bench)
    return parser

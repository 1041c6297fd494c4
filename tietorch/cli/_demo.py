"""``tietorch demo``: see :mod:`tietorch._demo`."""

from __future__ import annotations

import argparse
import sys

from ._errors import CLIError

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Tie a small CNN, train it, check the ties, save and reload; the exit code."""
    from .._demo import run_demo

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out}: not a directory")
    try:
        return run_demo(seconds=args.seconds, seed=args.seed, out=args.out, threads=args.threads)
    except OSError as error:  # --out not writable, disk full...
        raise CLIError(f"cannot save the checkpoint: {error}", code=1) from None
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

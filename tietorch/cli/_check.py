"""``tietorch check``: :func:`tietorch.testing.check_tie` on a tie, with a one-line verdict that
says what was really checked (from the :class:`~tietorch.testing.CheckReport`)."""

from __future__ import annotations

import argparse
import time

from .._render import shape_text
from ._errors import CLIError
from ._limits import check_size
from ._user import resolve_tie

__all__ = ["cmd_check"]


def cmd_check(args: argparse.Namespace) -> int:
    """Run check_tie on the tie ``args.tie`` names; 0 if it passes, 1 if not."""
    try:
        from ..testing import check_tie
        from ..testing.strategies import shapes_for
    except ImportError as error:
        raise CLIError(str(error)) from None
    tie = resolve_tie(args.tie)
    shapes: list[tuple[int, ...]] | None = args.shape
    if shapes:
        for shape in shapes:
            check_size(shape)
            try:
                tie.check_shape(shape)
            except Exception as error:
                raise CLIError(f"{tie!r} refuses shape {shape_text(shape)}: {error}") from None
    else:
        try:
            shapes_for(tie)
        except (ValueError, TypeError) as error:
            raise CLIError(f"{error}; pass --shape") from None
    start = time.perf_counter()
    try:
        report = check_tie(tie, shapes=shapes or None, max_examples=args.max_examples)
    except AssertionError as error:
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r}\n{error}{notes}")
        return 1
    except Exception as error:  # the tie's own code raised while being checked
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r} raised {type(error).__name__}: {error}{notes}")
        return 1
    elapsed = time.perf_counter() - start
    checked = report.shapes
    if len(checked) <= 4:
        noun = "shape " if len(checked) == 1 else "shapes "
        where = noun + ", ".join(shape_text(s.shape) for s in checked)
    else:
        dims = sorted({len(s.shape) for s in checked})
        rank = f"{dims[0]}" if len(dims) == 1 else f"{dims[0]} to {dims[-1]}"
        low, high = min(s.numel for s in checked), max(s.numel for s in checked)
        where = f"{len(checked)} shapes of {rank} dims, {low:,} to {high:,} entries"
    print(
        f"OK {args.tie}: {tie!r} passed check_tie ({report.examples} examples on {where}; "
        f"{report.summary()}) in {elapsed:.1f} s"
    )
    return 0

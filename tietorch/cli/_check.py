"""``tietorch check``: :func:`tietorch.testing.check_tie` on a tie, with a one-line verdict."""

from __future__ import annotations

import argparse
import math
import time

from .._render import shape_text
from .._tie import Tie
from ._errors import CLIError
from ._limits import check_size
from ._user import resolve_tie

__all__ = ["cmd_check"]


def _what_check_tie_checks(tie: Tie, shapes: list[tuple[int, ...]] | None) -> str:
    from ..testing import RANK_CHECK_MAX_NUMEL

    declares = tie._declares()
    if declares == "layout":
        return (
            "well-formed layout, projection, gradients (it overrides only layout(): "
            "no key or relations to check it against)"
        )
    declared = {
        "key": "declared key holds",
        "relations": "declared relations hold",
        "all of": "declarations of all parts hold",
    }[declares]
    if shapes is not None and all(math.prod(s) > RANK_CHECK_MAX_NUMEL for s in shapes):
        rank = (
            f"not over-tied (checked against tietorch's solver: shapes > "
            f"{RANK_CHECK_MAX_NUMEL} entries are too large for the dense rank)"
        )
    else:
        rank = "minimal by dense rank"
    return f"well-formed layout, {declared}, {rank}, projection, gradients"


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
        where = "shapes " + ", ".join(shape_text(s) for s in dict.fromkeys(shapes))
    else:
        try:
            shapes_for(tie)
        except (ValueError, TypeError) as error:
            raise CLIError(f"{error}; pass --shape") from None
        where = "small shapes it accepts (1 to 4 dims of sizes 1 to 5)"
    start = time.perf_counter()
    try:
        check_tie(tie, shapes=shapes or None, max_examples=args.max_examples)
    except AssertionError as error:
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r}\n{error}{notes}")
        return 1
    except Exception as error:  # the tie's own code raised while being checked
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r} raised {type(error).__name__}: {error}{notes}")
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"OK {args.tie}: {tie!r} passed check_tie ({args.max_examples} examples on {where}; "
        f"{_what_check_tie_checks(tie, shapes)}) in {elapsed:.1f} s"
    )
    return 0

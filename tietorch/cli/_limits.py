"""What the command line accepts: a size limit on shapes, and a tie's refusal as a usage error."""

from __future__ import annotations

import math

from .._render import shape_text
from .._tie import Tie, TieLayout
from ._errors import CLIError

__all__ = ["MAX_ENTRIES", "check_size", "layout_of"]

MAX_ENTRIES = 10**8  # a layout of this size takes seconds and a few GB


def check_size(shape: tuple[int, ...]) -> None:
    """A usage error for shapes over :data:`MAX_ENTRIES` entries, before anything is allocated."""
    if math.prod(shape) > MAX_ENTRIES:
        raise CLIError(
            f"shape {shape_text(shape)} has {math.prod(shape):,} entries; the command line "
            f"handles at most {MAX_ENTRIES:,} (call tie.layout in Python for more)"
        )


def layout_of(tie: Tie, shape: tuple[int, ...]) -> TieLayout:
    """``tie.layout(shape)``; a refusal (ValueError and the like) becomes a usage error."""
    check_size(shape)
    try:
        return tie.layout(shape)
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        raise CLIError(f"{tie!r} refuses shape {shape_text(shape)}: {error}") from None
    except (RuntimeError, MemoryError) as error:
        raise CLIError(f"{tie!r} on shape {shape_text(shape)} failed: {error}") from None

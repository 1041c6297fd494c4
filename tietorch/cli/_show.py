"""``tietorch show``: a tie's layout on a shape, in words (and optionally as a PNG)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .._render import plot_layout, render_layout
from ._errors import CLIError
from ._limits import layout_of
from ._user import resolve_tie

__all__ = ["cmd_show"]


def _can_encode(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def cmd_show(args: argparse.Namespace) -> int:
    """Print the layout; with ``--png FILE`` also draw the class map there."""
    if args.png is not None and not args.png.parent.is_dir():
        raise CLIError(f"--png {args.png}: no directory {str(args.png.parent)!r}")
    tie = resolve_tie(args.tie)
    layout_of(tie, args.shape)  # a refusal becomes a usage error; the layout is cached
    print(render_layout(tie, args.shape, ascii=not _can_encode("·", sys.stdout)))
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # the text above is still useful; the missing extra is a setup error
            raise CLIError(
                '--png needs matplotlib, which is not installed: pip install "tietorch[plot]"'
            ) from None
        try:
            plot_layout(tie, args.shape).savefig(args.png, dpi=120, bbox_inches="tight")
        except (OSError, ValueError) as error:  # unwritable file, unknown image format...
            raise CLIError(f"cannot write {args.png}: {error}", code=1) from None
        print(f"\nwrote {args.png}")
    return 0

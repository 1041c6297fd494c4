"""What :func:`~tietorch.testing.check_tie` checked: a :class:`CheckReport`, one
:class:`ShapeReport` per shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["CheckReport", "Declaration", "Minimality", "ShapeReport"]

#: How the number of free parameters of a shape's layout was checked: against the dimension of
#: the declared constraint system computed by dense rank (minimal and complete), against
#: tietorch's solve of the declaration (not over-tied: the shape is too large for the dense
#: rank), or not at all (the tie declares nothing but its layout).
Minimality = Literal["dense rank", "solver", "not checked"]

#: What a tie declares: a ``key``, ``relations``, the declarations of its parts (``a & b``), or
#: only a ``layout``.
Declaration = Literal["key", "relations", "all of", "layout"]

_DECLARED = {
    "key": "declared key holds",
    "relations": "declared relations hold",
    "all of": "declarations of all parts hold",
}


@dataclass(frozen=True)
class ShapeReport:
    """One shape check_tie checked.

    Attributes:
        shape: the tensor's shape.
        n_free: the layout's number of free parameters on it.
        minimality: how ``n_free`` was checked (see :data:`Minimality`).
        examples: how many examples checked this shape (each with its own random theta).
    """

    shape: tuple[int, ...]
    n_free: int
    minimality: Minimality
    examples: int

    @property
    def numel(self) -> int:
        """The tensor's number of entries."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class CheckReport:
    """The result of a :func:`~tietorch.testing.check_tie` that passed.

    Attributes:
        tie: the ``repr`` of the tie checked.
        declaration: what it declares: ``"key"``, ``"relations"``, ``"all of"`` (``a & b``) or
            ``"layout"`` (only a layout: nothing to check it against).
        examples: how many Hypothesis examples ran (each checks several shapes).
        shapes: every distinct shape checked, smallest first.

    Examples:
        >>> from tietorch import Toeplitz
        >>> from tietorch.testing import check_tie
        >>> report = check_tie(Toeplitz(), shapes=[(3, 3), (30, 30)], max_examples=3)
        >>> [(s.shape, s.n_free, s.minimality) for s in report.shapes]
        [((3, 3), 5, 'dense rank'), ((30, 30), 59, 'solver')]
        >>> print(report.summary())
        well-formed layout, declared key holds, minimal by dense rank on 1 shape (9 entries),
        not over-tied by tietorch's solver on 1 shape (900 entries; over 400, too large for the
        dense rank), projection, gradients
    """

    tie: str
    declaration: Declaration
    examples: int
    shapes: tuple[ShapeReport, ...]

    def by(self, minimality: Minimality) -> tuple[ShapeReport, ...]:
        """The shapes whose count was checked this way."""
        return tuple(s for s in self.shapes if s.minimality == minimality)

    def summary(self) -> str:
        """The checks that ran, in one line (what ``tietorch check`` prints)."""
        from ._oracle import RANK_CHECK_MAX_NUMEL

        if self.declaration == "layout":
            return (
                "well-formed layout, projection, gradients (the tie overrides only layout(): "
                "no key or relations to check it against)"
            )
        parts = ["well-formed layout", _DECLARED[self.declaration]]
        rank, solver = self.by("dense rank"), self.by("solver")
        if rank:
            parts.append(f"minimal by dense rank on {_count(rank)} ({_sizes(rank)})")
        if solver:
            parts.append(
                f"not over-tied by tietorch's solver on {_count(solver)} ({_sizes(solver)}; "
                f"over {RANK_CHECK_MAX_NUMEL}, too large for the dense rank)"
            )
        parts += ["projection", "gradients"]
        return ", ".join(parts)

    def __str__(self) -> str:
        dims = sorted({len(s.shape) for s in self.shapes})
        return (
            f"check_tie passed: {self.tie}, {self.examples} examples on {_count(self.shapes)} "
            f"({_dims_text(dims)}, {_sizes(self.shapes)}): {self.summary()}"
        )


def _dims_text(dims: list[int]) -> str:
    return f"{dims[0]} dims" if len(dims) == 1 else f"{dims[0]} to {dims[-1]} dims"


def _count(shapes: tuple[ShapeReport, ...]) -> str:
    return f"{len(shapes)} shape" if len(shapes) == 1 else f"{len(shapes)} shapes"


def _sizes(shapes: tuple[ShapeReport, ...]) -> str:
    low, high = min(s.numel for s in shapes), max(s.numel for s in shapes)
    return f"{low:,} entries" if low == high else f"{low:,} to {high:,} entries"

"""Small helpers shared by the built-in ties: normalizing and checking dims."""

from __future__ import annotations

import operator
from collections.abc import Sequence

from .._tie import Tie
from ..errors import ArgumentError, ShapeError, TieTypeError

Shape = tuple[int, ...]


def as_dims(dims: int | Sequence[int]) -> tuple[int, ...]:
    """``dims`` as a tuple of ints; floats and other non-integers are refused, not truncated."""
    try:
        values = [dims] if not isinstance(dims, Sequence) else list(dims)
        if any(isinstance(d, bool) for d in values):
            raise TypeError
        return tuple(operator.index(d) for d in values)
    except TypeError:
        raise TieTypeError(f"dims must be an int or a sequence of ints, got {dims!r}") from None


def as_count(value: object, what: str) -> int:
    """A positive integer argument (``groups``, ``tile``); floats are refused, not truncated."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TieTypeError(f"{what} must be an int, got {value!r}") from None
    if count < 1:
        raise ArgumentError(f"{what} must be >= 1, got {value!r}")
    return count


def resolve_dims(tie: Tie, dims: tuple[int, ...], shape: Shape) -> tuple[int, ...]:
    """Map possibly negative ``dims`` onto ``shape``; refuse dims it does not have."""
    ndim = len(shape)
    for d in dims:
        if not -ndim <= d < ndim:
            raise ShapeError(f"acts on dims {dims}, but the tensor has {ndim} dims")
    resolved = tuple(d % ndim for d in dims)
    if len(set(resolved)) != len(resolved):
        raise ShapeError(f"dims {dims} name the same dim twice")
    return resolved


def require_equal_sizes(tie: Tie, dims: tuple[int, ...], shape: Shape, why: str) -> None:
    sizes = {shape[d] for d in dims}
    if len(sizes) > 1:
        raise ShapeError(f"needs dims {dims} of equal size ({why})")

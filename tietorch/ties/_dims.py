"""Small helpers shared by the built-in ties: normalizing and checking dims."""

from __future__ import annotations

from collections.abc import Sequence

from .._tie import Tie

Shape = tuple[int, ...]


def as_dims(dims: int | Sequence[int]) -> tuple[int, ...]:
    return (int(dims),) if isinstance(dims, int) else tuple(int(d) for d in dims)


def resolve_dims(tie: Tie, dims: tuple[int, ...], shape: Shape) -> tuple[int, ...]:
    """Map possibly negative ``dims`` onto ``shape``; refuse dims it does not have."""
    ndim = len(shape)
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(
                f"{tie!r} acts on dims {dims}, but the tensor has shape {shape} ({ndim} dims)"
            )
    resolved = tuple(d % ndim for d in dims)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{tie!r}: dims {dims} name the same dim twice for shape {shape}")
    return resolved


def require_equal_sizes(tie: Tie, dims: tuple[int, ...], shape: Shape, why: str) -> None:
    sizes = {shape[d] for d in dims}
    if len(sizes) > 1:
        raise ValueError(
            f"{tie!r} needs dims {dims} of equal size ({why}), got shape {shape}"
        )

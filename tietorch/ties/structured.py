"""Structured matrices on two dims: Toeplitz, Hankel and circulant."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._tie import Tie
from ..errors import ArgumentError
from ._dims import Shape, as_dims, require_equal_sizes, resolve_dims

__all__ = ["Toeplitz", "Hankel", "Circulant"]


class _TwoDimKey(Tie):
    """A key tie on two dims ``(row, col)``; every other dim is left independent (a batch)."""

    def __init__(self, dims: Sequence[int] = (-2, -1)) -> None:
        self.dims = as_dims(dims)
        if len(self.dims) != 2:
            raise ArgumentError(f"{type(self).__name__}: dims must name two dims, got {dims!r}")

    def check_shape(self, shape: Shape) -> None:
        resolve_dims(self, self.dims, shape)

    def key(self, *idx: Tensor) -> tuple[Tensor, ...]:
        ndim = len(idx)
        r, c = (d % ndim for d in self.dims)
        others = tuple(x for d, x in enumerate(idx) if d not in (r, c))
        return (self._diagonal(idx[r], idx[c], idx[c].numel()), *others)

    def _diagonal(self, i: Tensor, j: Tensor, n: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dims={self.dims})"


class Toeplitz(_TwoDimKey):
    """Constant along diagonals: ``W[i, j]`` depends on ``i - j`` only; m+n-1 free for m×n.

    Example:
        >>> Toeplitz().layout((3, 5)).n_free
        7
    """

    def _diagonal(self, i: Tensor, j: Tensor, n: int) -> Tensor:
        return i - j


class Hankel(_TwoDimKey):
    """Constant along anti-diagonals: ``W[i, j]`` depends on ``i + j``; m+n-1 free for m×n.

    Example:
        >>> Hankel().layout((3, 5)).n_free
        7
    """

    def _diagonal(self, i: Tensor, j: Tensor, n: int) -> Tensor:
        return i + j


class Circulant(_TwoDimKey):
    """Each row is the previous one shifted right cyclically: ``W[i, j] = c[(j - i) mod n]``.

    A circulant matrix is a 1-D circular convolution; n free for n×n.

    Example:
        >>> Circulant().layout((4, 4)).index.tolist()
        [[0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1], [1, 2, 3, 0]]
    """

    def check_shape(self, shape: Shape) -> None:
        dims = resolve_dims(self, self.dims, shape)
        require_equal_sizes(self, dims, shape, "a circulant matrix is square")

    def _diagonal(self, i: Tensor, j: Tensor, n: int) -> Tensor:
        return (j - i) % n

"""Structured matrices on two dims: Toeplitz, Hankel and circulant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import TieLayout, on_cpu
from .._tie import CLOSED_FORM_BYTES_PER_ENTRY, Tie, cached_layout
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

    def _class_of(self, i: Tensor, j: Tensor, m: int, n: int) -> Tensor:
        """The class of ``(i, j)`` on an ``m × n`` matrix in closed form, numbered as the
        solver numbers them (by first entry in row-major order)."""
        raise NotImplementedError

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form where ``dims`` are the last two, in order (each leading index a batch
        of its own: :meth:`TieLayout.repeated`); otherwise the key is solved."""
        ndim = len(shape)
        in_range = all(-ndim <= d < ndim for d in self.dims)
        trailing = in_range and tuple(d % ndim for d in self.dims) == (ndim - 2, ndim - 1)
        own_key = type(self).key is _TwoDimKey.key and type(self)._diagonal in _CLOSED_FORMS
        if not trailing or not own_key:
            return super().layout(shape)  # other dims, or a subclass's own key: solve that
        return cached_layout(self, shape, self._closed_form, CLOSED_FORM_BYTES_PER_ENTRY)

    @on_cpu  # under a meta (or cuda) default device too: layouts live on the CPU
    def _closed_form(self, shape: Shape) -> TieLayout:
        m, n = shape[-2:]
        index = self._class_of(torch.arange(m).view(m, 1), torch.arange(n).view(1, n), m, n)
        index = index.expand(m, n)
        n_free = int(index.max()) + 1 if index.numel() else 0
        matrix = TieLayout(index, n_free)
        return TieLayout.repeated(matrix, shape[:-2]) if len(shape) > 2 else matrix

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

    def _class_of(self, i: Tensor, j: Tensor, m: int, n: int) -> Tensor:
        # diagonal j - i >= 0 first appears in row 0 (class j - i); j - i = -k at (k, 0),
        # after the n classes of row 0 and the k - 1 earlier rows' new ones
        return torch.where(j >= i, j - i, n - 1 + i - j)


class Hankel(_TwoDimKey):
    """Constant along anti-diagonals: ``W[i, j]`` depends on ``i + j``; m+n-1 free for m×n.

    Example:
        >>> Hankel().layout((3, 5)).n_free
        7
    """

    def _diagonal(self, i: Tensor, j: Tensor, n: int) -> Tensor:
        return i + j

    def _class_of(self, i: Tensor, j: Tensor, m: int, n: int) -> Tensor:
        # anti-diagonal i + j first appears in row 0 (i + j < n) or in the last column
        # (class n - 1 + i there): i + j either way
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

    def _class_of(self, i: Tensor, j: Tensor, m: int, n: int) -> Tensor:
        return (j - i) % n  # every class appears in row 0, in order


# the keys whose classes _class_of gives in closed form (a subclass with its own is solved)
_CLOSED_FORMS = (Toeplitz._diagonal, Hankel._diagonal, Circulant._diagonal)

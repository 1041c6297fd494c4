"""Transpose-type ties: ``W[.., i, .., j, ..] = s * W[.., j, .., i, ..]``, optionally flipped."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import TieLayout, on_cpu
from .._solver import pair_classes
from .._tie import CLOSED_FORM_BYTES_PER_ENTRY, Tie, cached_layout
from ..errors import ArgumentError
from ._dims import Shape, as_dims, require_equal_sizes, resolve_dims

__all__ = ["SymmetricFlip", "Symmetric", "Antisymmetric"]


class SymmetricFlip(Tie):
    """Swap two dims and flip others: ``W[i, j, a, b] = sign * W[j, i, -1-a, -1-b]``.

    The default is the constraint of a same-padded, odd-kernel convolution that is a self-adjoint
    operator (``sign=-1``: anti-self-adjoint); on a ``(nf, nf, k, k)`` weight it leaves
    ``nf(nf-1)/2 * k*k + nf * ceil(k*k/2)`` free parameters.

    Args:
        dims: the two dims to swap (of equal size).
        flip: dims to reverse (``a -> -1 - a``).
        sign: +1 (symmetric) or -1 (antisymmetric; may force entries to zero).

    Example:
        >>> import torch, tietorch
        >>> conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        >>> _ = tietorch.register_tie(conv, "weight", SymmetricFlip())
        >>> W = conv.weight
        >>> torch.equal(W, W.transpose(0, 1).flip(2, 3))
        True
        >>> conv.parametrizations.weight.original.numel()  # 3*2/2*9 + 3*5
        42
    """

    def __init__(
        self, dims: Sequence[int] = (0, 1), flip: int | Sequence[int] = (2, 3), sign: int = 1
    ) -> None:
        self.dims = as_dims(dims)
        self.flip = as_dims(flip)
        if len(self.dims) != 2:
            raise ArgumentError(f"{type(self).__name__}: dims must name two dims, got {dims!r}")
        if sign not in (1, -1):
            raise ArgumentError(f"{type(self).__name__}: sign must be +1 or -1, got {sign!r}")
        self._sign = sign

    def check_shape(self, shape: Shape) -> None:
        resolve_dims(self, self.flip, shape)
        require_equal_sizes(self, resolve_dims(self, self.dims, shape), shape, "they are swapped")

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form, without evaluating the relation or solving: the map swaps two dims
        and reverses others, so it is a transpose and a flip of the tensor of flat indices; the
        classes are the pairs ``{x, g(x)}``, numbered by their smaller entry (as the solver
        numbers them), and every read of "the other end of the pair" is that same transpose
        and flip instead of a gather. With ``sign=-1`` the fixed points are zero."""
        if type(self).relations is not SymmetricFlip.relations:  # a subclass: solve that
            return super().layout(shape)
        return cached_layout(self, shape, self._closed_form, CLOSED_FORM_BYTES_PER_ENTRY)

    def _paired(self, t: Tensor) -> Tensor:
        """``t`` read at the other end of each entry's pair: ``t[g(x)]`` for every ``x``."""
        ndim = t.dim()
        i, j = (d % ndim for d in self.dims)
        flip = sorted({d % ndim for d in self.flip})
        swapped = t.transpose(i, j)
        return swapped.flip(flip) if flip else swapped

    @on_cpu  # under a meta (or cuda) default device too: layouts live on the CPU
    def _closed_form(self, shape: Shape) -> TieLayout:
        nodes = torch.arange(math.prod(shape)).view(shape)
        negative = torch.tensor(True) if self._sign == -1 else None
        index, n_free, sign = pair_classes(nodes, self._paired, negative)
        return TieLayout(index, n_free, sign)

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...]:
        ndim = len(idx)
        i, j = (d % ndim for d in self.dims)
        flip = {d % ndim for d in self.flip}
        target = [(-1 - x) if d in flip else x for d, x in enumerate(idx)]
        target[i], target[j] = target[j], target[i]
        return tuple(target)

    def sign(self, *idx: Tensor) -> int:
        return self._sign

    def __repr__(self) -> str:
        sign = "" if self._sign == 1 else f", sign={self._sign}"
        return f"{type(self).__name__}(dims={self.dims}, flip={self.flip}{sign})"


class Symmetric(SymmetricFlip):
    """``W[.., i, .., j, ..] = W[.., j, .., i, ..]`` over ``dims``; n(n+1)/2 free for n×n.

    Example:
        >>> Symmetric().layout((4, 4)).n_free
        10
        >>> Symmetric(dims=(1, 2)).layout((2, 3, 3)).n_free  # a batch of two
        12
    """

    def __init__(self, dims: Sequence[int] = (0, 1)) -> None:
        super().__init__(dims, flip=(), sign=1)

    def __repr__(self) -> str:
        return f"Symmetric(dims={self.dims})"


class Antisymmetric(SymmetricFlip):
    """``W[.., i, .., j, ..] = -W[.., j, .., i, ..]``; the diagonal is forced to zero.

    Example:
        >>> layout = Antisymmetric().layout((4, 4))
        >>> layout.n_free, layout.n_zero  # n(n-1)/2 free, n zeros
        (6, 4)
    """

    def __init__(self, dims: Sequence[int] = (0, 1)) -> None:
        super().__init__(dims, flip=(), sign=-1)

    def __repr__(self) -> str:
        return f"Antisymmetric(dims={self.dims})"

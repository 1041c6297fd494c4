"""Transpose-type ties: ``W[.., i, .., j, ..] = s * W[.., j, .., i, ..]``, optionally flipped."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._tie import Tie
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

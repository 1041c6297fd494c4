"""Group convolutions p4 / p4m (Cohen & Welling 2016): a ``Conv2d`` whose filters are tied
across rotated (and mirrored) copies.

A group element is ``(m, r)``: mirror ``m`` times (``torch.flip(x, dims=(-1,))``), then rotate
``r`` times by 90 degrees (``torch.rot90(x, r, dims=(-2, -1))``); its index is ``g = 4 m + r``
(p4 has ``m = 0`` only). Composition: ``(m1, r1)(m2, r2) = (m1 + m2 mod 2, r1 + (-1)^m1 r2
mod 4)``. A *regular* field is |G| channels, one per group element, ``channel = field * |G| +
g``; a *trivial* one is a plain channel. Rotating (mirroring) the input of an equivariant
conv by ``h`` transforms every output map by ``h`` and moves regular channel ``g`` to ``h g``.
The tie: for each generator ``h`` of the group (the rotation, and for p4m the mirror),
``W[h o, h i, h (a, b)] = W[o, i, a, b]``, ``h`` acting on regular channels by ``g -> h g``,
on trivial ones not at all, and on the kernel as on an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._tie import Tie
from ..errors import ArgumentError, ShapeError
from ._dims import Shape

__all__ = ["GroupConv", "compose", "elements"]

_ORDERS = {"p4": 4, "p4m": 8}
_REPS = ("trivial", "regular")


def elements(group: str) -> list[tuple[int, int]]:
    """The elements ``(m, r)`` of ``group``, in channel order (``g = 4 m + r``).

    Example:
        >>> len(elements("p4m")), elements("p4m")[4]  # the first mirrored element
        (8, (1, 0))
    """
    _check_group(group)
    return [(m, r) for m in range(_ORDERS[group] // 4) for r in range(4)]


def compose(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The element ``a b`` (``b`` first, then ``a``): ``(m1 + m2, r1 + (-1)^m1 r2)``."""
    return ((a[0] + b[0]) % 2, (a[1] + (-1) ** a[0] * b[1]) % 4)


def _check_group(group: str) -> None:
    if group not in _ORDERS:
        raise ArgumentError(f"GroupConv: group must be 'p4' or 'p4m', got {group!r}")


class GroupConv(Tie):
    """The tie that makes a ``Conv2d`` weight ``(out, in, k, k)`` (or its bias ``(out,)``) a
    group convolution of ``group`` (``"p4"``: rotations by 90 degrees; ``"p4m"``: with
    mirrors) from ``in_rep`` to ``out_rep`` fields (``"trivial"``: plain channels;
    ``"regular"``: |G| channels per field, group element fastest).

    trivial -> regular is the lifting layer, regular -> regular the group layer, regular ->
    trivial the projection; the bias gets one value per output field. With an odd kernel,
    "same" padding and square inputs a stack of such convs is exactly equivariant.

    Example:
        >>> import torch, tietorch
        >>> lift = torch.nn.Conv2d(3, 16 * 4, 3, padding=1)  # 3 channels -> 16 p4 fields
        >>> _ = tietorch.register_tie(lift, "weight", GroupConv("p4", "trivial", "regular"))
        >>> lift.parametrizations.weight.original.numel()  # 16 * 3 * 3 * 3
        432
        >>> GroupConv("p4m", "regular", "regular").layout((8, 8, 3, 3)).n_free  # 1*1*8*9
        72
    """

    def __init__(self, group: str, in_rep: str, out_rep: str) -> None:
        _check_group(group)
        for name, rep in (("in_rep", in_rep), ("out_rep", out_rep)):
            if rep not in _REPS:
                raise ArgumentError(
                    f"GroupConv: {name} must be 'trivial' or 'regular', got {rep!r}"
                )
        self.group, self.in_rep, self.out_rep = group, in_rep, out_rep
        self.order = _ORDERS[group]

    @property
    def generators(self) -> list[tuple[int, int]]:
        """The rotation, and for p4m the mirror."""
        return [(0, 1)] if self.group == "p4" else [(0, 1), (1, 0)]

    def check_shape(self, shape: Shape) -> None:
        if len(shape) not in (1, 4):
            raise ShapeError("needs a conv weight (out, in, k, k) or a bias (out,)")
        channels: Sequence[tuple[str, int, str]] = [("out", shape[0], self.out_rep)]
        if len(shape) == 4:
            if shape[2] != shape[3]:
                raise ShapeError("needs a square kernel (it is rotated)")
            channels = [*channels, ("in", shape[1], self.in_rep)]
        for name, size, rep in channels:
            if rep == "regular" and size % self.order:
                raise ShapeError(
                    f"needs {name} channels in fields of |{self.group}| = {self.order} "
                    f"(regular), got {size}"
                )

    def _channel_map(self, h: tuple[int, int], rep: str, channel: Tensor) -> Tensor:
        """Where ``h`` sends each channel: regular ``field * |G| + g -> field * |G| + h g``."""
        if rep == "trivial":
            return channel
        table = torch.tensor([4 * m + r for m, r in (compose(h, e) for e in elements(self.group))])
        return channel - channel % self.order + table[channel % self.order]

    def relations(self, *idx: Tensor) -> list[tuple[Tensor, ...]]:
        out: list[tuple[Tensor, ...]] = []
        for h in self.generators:
            o = self._channel_map(h, self.out_rep, idx[0])
            if len(idx) == 1:
                out.append((o,))
                continue
            i = self._channel_map(h, self.in_rep, idx[1])
            a, b = idx[2], idx[3]
            k = b.numel()  # the grid along the last dim (as the other two-dim ties read it)
            if h == (0, 1):  # rot90: the entry at (a, b) moves to (k-1-b, a)
                a, b = k - 1 - b, a
            else:  # mirror of the last dim
                b = k - 1 - b
            out.append((o, i, a, b))
        return out

    def __repr__(self) -> str:
        return f"GroupConv({self.group!r}, {self.in_rep!r}, {self.out_rep!r})"

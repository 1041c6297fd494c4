"""Symmetries of a convolution kernel's spatial dims (the last two)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._layout import TieLayout, on_cpu
from .._tie import CLOSED_FORM_BYTES_PER_ENTRY, Tie, cached_layout
from ..errors import ArgumentError, ShapeError
from ._dims import Shape

__all__ = ["KernelSymmetry"]


def _rot90(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return b, -1 - a


def _flip_h(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return a, -1 - b


def _flip_v(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return -1 - a, b


def _rot180(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return -1 - a, -1 - b


# Generators of each group acting on (row, col) of a kernel; the solver closes them.
_GENERATORS = {
    "D4": (_rot90, _flip_h),
    "C4": (_rot90,),
    "C2": (_rot180,),
    "flip_h": (_flip_h,),
    "flip_v": (_flip_v,),
}
_NEEDS_SQUARE = {"D4", "C4"}


class KernelSymmetry(Tie):
    """A kernel invariant under a symmetry group acting on its last two (spatial) dims.

    ``group`` is one of ``"D4"`` (rotations by 90° and flips), ``"C4"`` (rotations by 90°),
    ``"C2"`` (rotation by 180°), ``"flip_h"`` (left-right mirror), ``"flip_v"`` (up-down mirror).
    A same-padded convolution with a D4-invariant kernel commutes with rotating and flipping its
    input. Free parameters per k×k kernel: D4 h(h+1)/2 with h = ceil(k/2); C4 ceil(k²/4);
    C2 ceil(k²/2); one flip k·ceil(k/2).

    Example:
        >>> KernelSymmetry("D4").layout((3, 3)).index.tolist()
        [[0, 1, 0], [1, 2, 1], [0, 1, 0]]
    """

    def __init__(self, group: str) -> None:
        if group not in _GENERATORS:
            raise ArgumentError(
                f"KernelSymmetry: unknown group {group!r}; expected one of {sorted(_GENERATORS)}"
            )
        self.group = group

    def check_shape(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise ShapeError("acts on the last two dims; the tensor has fewer")
        if self.group in _NEEDS_SQUARE and shape[-1] != shape[-2]:
            raise ShapeError("needs a square kernel (last two dims equal)")

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form: the kernel's classes, solved once on the last two dims, repeated for
        every index of the leading dims (:meth:`TieLayout.repeated`, numbered as the solver
        numbers them). On a ``(4096, 7, 7)`` weight that is one 49-entry solve and one index
        write, not a solve over 200,704 entries."""
        if type(self).relations is not KernelSymmetry.relations:  # a subclass: solve that
            return super().layout(shape)
        return cached_layout(self, shape, self._closed_form, CLOSED_FORM_BYTES_PER_ENTRY)

    @on_cpu  # under a meta (or cuda) default device too: layouts live on the CPU
    def _closed_form(self, shape: Shape) -> TieLayout:
        kernel = self._solved(shape[-2:])  # tiny, and not cached beside the full shape
        return TieLayout.repeated(kernel, shape[:-2])

    def relations(self, *idx: Tensor) -> list[tuple[Tensor, ...]]:
        *rest, a, b = idx
        return [(*rest, *g(a, b)) for g in _GENERATORS[self.group]]

    def __repr__(self) -> str:
        return f"KernelSymmetry({self.group!r})"

"""Forced zeros: the entries a mask marks are not parameters, they are zero."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import TieLayout
from .._tie import Tie, cached_layout
from ..errors import ShapeError, TieTypeError
from ._dims import Shape

__all__ = ["ZeroWhere"]


class ZeroWhere(Tie):
    """The entries where ``mask`` is True are forced to zero (``W[x] = -W[x]``); every other
    entry is its own free parameter. They stay zero in training and in checkpoints, and an
    assigned tensor's values there are dropped (the projection).

    Combined with another tie (``tie & ZeroWhere(mask)``) a forced entry zeroes its whole
    class: the locally connected layers' ``zero_padding_weights=True`` checks that no class
    mixes forced and free entries before it combines them.

    Example:
        >>> import torch
        >>> tie = ZeroWhere(torch.tensor([[True, False, False], [False, False, True]]))
        >>> layout = tie.layout((2, 3))
        >>> layout.n_free, layout.n_zero, layout.index.tolist()
        (4, 2, [[0, 0, 1], [2, 3, 0]])
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask, device="cpu")
        if mask.dtype != torch.bool:
            raise TieTypeError(f"ZeroWhere: mask must be a bool tensor, got {mask.dtype}")
        self.mask = mask

    def check_shape(self, shape: Shape) -> None:
        if tuple(shape) != tuple(self.mask.shape):
            raise ShapeError(f"needs the mask's shape {tuple(self.mask.shape)}")

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...]:
        return idx  # W[x] = sign(x) * W[x]: a forced zero where the sign is -1

    def sign(self, *idx: Tensor) -> Tensor:
        return torch.where(self.mask[idx], -1, 1)

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form, without solving: the free entries numbered in row-major order (as
        the solver numbers them), the forced ones reading parameter 0 with sign 0."""
        return cached_layout(self, shape, self._closed_form)

    def _closed_form(self, shape: Shape) -> TieLayout:
        free = ~self.mask
        index = (free.reshape(-1).cumsum(0) - 1).clamp_min(0).view(shape)
        return TieLayout(index, int(free.sum()), free.to(torch.int8))

    def __repr__(self) -> str:
        return f"ZeroWhere({int(self.mask.sum())} of {self.mask.numel()} entries)"

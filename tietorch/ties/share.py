"""Sharing ties: one value along whole dims, or one block repeated across groups."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._layout import TieLayout
from .._tie import Tie, cached_layout
from ..errors import ShapeError
from ._dims import Shape, as_count, as_dims, resolve_dims

__all__ = ["ShareAlong", "ShareAcrossGroups"]


class ShareAlong(Tie):
    """Constant along ``dims``: entries that differ only in those dims are equal.

    ``ShareAlong(1)`` on a conv weight ``(out, in, kh, kw)`` applies one filter to every input
    channel (``out * kh * kw`` free parameters).

    Example:
        >>> ShareAlong(1).layout((8, 3, 5, 5)).n_free
        200
    """

    def __init__(self, dims: int | Sequence[int]) -> None:
        self.dims = as_dims(dims)

    def check_shape(self, shape: Shape) -> None:
        resolve_dims(self, self.dims, shape)

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form, without solving: :meth:`TieLayout.broadcast`, whose index (equal to
        the solver's for :meth:`key`) is built only if someone reads it; the tensor reads its
        free vector as an expanded view."""
        if type(self).key is not ShareAlong.key:  # a subclass with its own key: solve that
            return super().layout(shape)
        return cached_layout(self, shape, self._closed_form)

    def _closed_form(self, shape: Shape) -> TieLayout:
        return TieLayout.broadcast(shape, resolve_dims(self, self.dims, shape))

    def key(self, *idx: Tensor) -> tuple[Tensor, ...]:
        shared = {d % len(idx) for d in self.dims}
        return tuple(x for d, x in enumerate(idx) if d not in shared)

    def __repr__(self) -> str:
        dims = self.dims[0] if len(self.dims) == 1 else self.dims
        return f"ShareAlong({dims})"


class ShareAcrossGroups(Tie):
    """The ``groups`` consecutive blocks along ``dim`` are equal.

    With a grouped convolution, this gives every group the same filters: N input streams through
    one filter bank, outputs kept apart. Tie the weight and the bias alike (``dim=0``).

    Example:
        >>> import torch, tietorch
        >>> streams, bank = 4, 8  # 4 streams of 1 channel, 8 shared filters
        >>> conv = torch.nn.Conv2d(streams, streams * bank, 3, groups=streams)
        >>> _ = tietorch.register_tie(conv, "weight", ShareAcrossGroups(streams))
        >>> _ = tietorch.register_tie(conv, "bias", ShareAcrossGroups(streams))
        >>> sum(p.numel() for p in conv.parameters())  # one 1->8 conv: 8*9 + 8
        80
    """

    def __init__(self, groups: int, dim: int = 0) -> None:
        self.groups = as_count(groups, "ShareAcrossGroups: groups")
        (self.dim,) = as_dims(dim)

    def check_shape(self, shape: Shape) -> None:
        (dim,) = resolve_dims(self, (self.dim,), shape)
        if shape[dim] % self.groups:
            raise ShapeError(f"needs dim {self.dim} divisible by {self.groups}")

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form, without solving: the broadcast of ``shape`` with ``dim`` split into
        ``(groups, block)`` along the groups, reshaped back (:meth:`TieLayout.broadcast`; its
        index, equal to the solver's for :meth:`key`, is built only if someone reads it). The
        tensor repeats its free vector's block, reading no index."""
        if type(self).key is not ShareAcrossGroups.key:  # a subclass with its own key: solve it
            return super().layout(shape)
        return cached_layout(self, shape, self._closed_form)

    def _closed_form(self, shape: Shape) -> TieLayout:
        (dim,) = resolve_dims(self, (self.dim,), shape)
        split = (*shape[:dim], self.groups, shape[dim] // self.groups, *shape[dim + 1 :])
        return TieLayout.broadcast(split, (dim,), reshaped=shape)

    def key(self, *idx: Tensor) -> tuple[Tensor, ...]:
        dim = self.dim % len(idx)
        block = idx[dim].numel() // self.groups
        return tuple(x % block if d == dim else x for d, x in enumerate(idx))

    def __repr__(self) -> str:
        return f"ShareAcrossGroups({self.groups}, dim={self.dim})"

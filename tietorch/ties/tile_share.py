"""Tiled sharing over location dims: the tie that makes a locally connected layer a tiled conv."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._tie import Tie
from ..errors import ArgumentError
from ._dims import Shape, as_count, as_dims, resolve_dims

__all__ = ["TileShare"]


class TileShare(Tie):
    """Entries whose indices along ``dims`` agree modulo ``tile`` share one value.

    On a locally connected weight ``(H_out, W_out, out, in, kh, kw)`` (the default
    ``dims=(0, 1)``), locations with equal ``(i mod t, j mod t)`` share their kernel: a *tiled
    convolution* (Ngiam et al., 2010) with ``t × t`` different kernels repeating over the
    image. ``tile=1`` shares one kernel everywhere: an ordinary convolution. The same tie fits
    the bias ``(H_out, W_out, out)``; ``LocallyConnected2d(..., tie=TileShare(t))`` registers
    it on both. For a 1-d layer use ``dims=0``.

    Free parameters with tile ``t`` on ``(Ho, Wo, out, in, kh, kw)``:
    ``out * min(t, Ho) * min(t, Wo) * in * kh * kw``.

    Args:
        tile: the period, an int (all ``dims``) or one int per dim of ``dims``.
        dims: the dims that are tiled (default ``(0, 1)``, the location dims).

    Example:
        >>> TileShare(2).layout((5, 4, 8, 3, 3, 3)).n_free  # 8 * 2 * 2 * 3 * 3 * 3
        864
        >>> TileShare(2, dims=0).layout((5, 3)).index[:, 0].tolist()
        [0, 3, 0, 3, 0]
    """

    def __init__(self, tile: int | Sequence[int], dims: int | Sequence[int] = (0, 1)) -> None:
        self.dims = as_dims(dims)
        if isinstance(tile, Sequence):
            tiles = tuple(as_count(t, "TileShare: tile") for t in tile)
        else:
            tiles = (as_count(tile, "TileShare: tile"),) * len(self.dims)
        if len(tiles) != len(self.dims):
            raise ArgumentError(
                f"TileShare: tile {tile!r} must be an int or give one period per dim of {self.dims}"
            )
        self.tile = tiles

    def check_shape(self, shape: Shape) -> None:
        resolve_dims(self, self.dims, shape)

    def key(self, *idx: Tensor) -> tuple[Tensor, ...]:
        periods = dict(zip((d % len(idx) for d in self.dims), self.tile))
        return tuple(x % periods[d] if d in periods else x for d, x in enumerate(idx))

    def __repr__(self) -> str:
        tile = self.tile[0] if len(set(self.tile)) == 1 else self.tile
        if self.dims == (0, 1):
            return f"TileShare({tile})"
        dims = self.dims[0] if len(self.dims) == 1 else self.dims
        return f"TileShare({tile}, dims={dims})"

"""The built-in ties, each declared with the same public machinery as a user's own tie."""

from .equivariant import Equivariant, Invariant
from .group_conv import GroupConv
from .kernel import KernelSymmetry
from .share import ShareAcrossGroups, ShareAlong
from .structured import Circulant, Hankel, Toeplitz
from .symmetric import Antisymmetric, Symmetric, SymmetricFlip
from .tile_share import TileShare
from .zeros import ZeroWhere

__all__ = [
    "Antisymmetric",
    "Circulant",
    "Equivariant",
    "GroupConv",
    "Hankel",
    "Invariant",
    "KernelSymmetry",
    "ShareAcrossGroups",
    "ShareAlong",
    "Symmetric",
    "SymmetricFlip",
    "TileShare",
    "Toeplitz",
    "ZeroWhere",
]

"""Layers built on ties: locally connected convolutions (unshared weights per location)."""

from .locally_connected import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    free_workspace,
)
from .locally_connected_transpose import LocallyConnectedTranspose1d, LocallyConnectedTranspose2d
from .unshare import unshare, unshare_modules

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnected3d",
    "LocallyConnectedTranspose1d",
    "LocallyConnectedTranspose2d",
    "free_workspace",
    "unshare",
    "unshare_modules",
]

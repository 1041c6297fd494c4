"""Layers built on ties: locally connected convolutions (unshared weights per location)."""

from .locally_connected import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    free_workspace,
    unshare,
)

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnectedTranspose1d",
    "LocallyConnectedTranspose2d",
    "free_workspace",
    "unshare",
]

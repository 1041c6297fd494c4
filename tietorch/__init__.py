"""tietorch: declare which entries of a weight are tied; train only the free parameters.

>>> import torch, tietorch
>>> conv = torch.nn.Conv2d(8, 8, 3, padding=1)
>>> _ = tietorch.register_tie(conv, "weight", tietorch.SymmetricFlip())
>>> torch.equal(conv.weight, conv.weight.transpose(0, 1).flip(2, 3))
True
"""

from . import errors, groups
from ._checkpoint import dense_state_dict, load_dense_state_dict
from ._fast import FastForwardReport, FastPathRow, fast_forward
from ._group import tie_model, tie_tensors
from ._layout import TieLayout
from ._parametrization import TieParametrization
from ._register import bake, register_tie, remove_tie, tie_modules
from ._render import plot_layout, render_layout
from ._summary import TieSummary, summary
from ._tie import AllOf, Tie
from .layers import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    unshare,
    unshare_modules,
)
from .ties import (
    Antisymmetric,
    Circulant,
    Equivariant,
    GroupConv,
    Hankel,
    Invariant,
    KernelSymmetry,
    ShareAcrossGroups,
    ShareAlong,
    Symmetric,
    SymmetricFlip,
    TileShare,
    Toeplitz,
    ZeroWhere,
)

__version__ = "0.1.0"

__all__ = [
    "AllOf",
    "Antisymmetric",
    "Circulant",
    "Equivariant",
    "GroupConv",
    "FastForwardReport",
    "FastPathRow",
    "Hankel",
    "Invariant",
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnected3d",
    "LocallyConnectedTranspose1d",
    "LocallyConnectedTranspose2d",
    "KernelSymmetry",
    "ShareAcrossGroups",
    "ShareAlong",
    "Symmetric",
    "SymmetricFlip",
    "Tie",
    "TieLayout",
    "TieParametrization",
    "TieSummary",
    "TileShare",
    "Toeplitz",
    "ZeroWhere",
    "bake",
    "dense_state_dict",
    "errors",
    "groups",
    "fast_forward",
    "load_dense_state_dict",
    "plot_layout",
    "register_tie",
    "remove_tie",
    "render_layout",
    "summary",
    "tie_model",
    "tie_modules",
    "tie_tensors",
    "unshare",
    "unshare_modules",
]

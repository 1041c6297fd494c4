"""Every error tietorch raises on purpose is a ``tietorch.errors.TietorchError`` (and still the
``ValueError`` / ``TypeError`` it was before): a table of bad arguments to every public
constructor and call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import tietorch as tt
from tietorch.errors import TietorchError
from tietorch.testing import check_tie, strategies


def _tied_linear() -> nn.Linear:
    lin = nn.Linear(3, 3)
    tt.register_tie(lin, "weight", tt.Symmetric())
    return lin


def _lc(**kwargs: Any) -> tt.LocallyConnected2d:
    arguments: dict[str, Any] = dict(input_size=(8, 8))
    arguments.update(kwargs)
    return tt.LocallyConnected2d(3, 4, arguments.pop("kernel_size", 3), **arguments)


def _lc_forward(x: torch.Tensor) -> None:
    _lc()(x)


def _materialize(strategy: Any) -> None:  # Hypothesis strategies check their arguments lazily
    strategy.example()


BAD: list[tuple[str, Callable[[], Any]]] = [
    # built-in ties: their arguments
    ("Symmetric one dim", lambda: tt.Symmetric(dims=(0,))),
    ("SymmetricFlip sign 2", lambda: tt.SymmetricFlip(sign=2)),
    ("Antisymmetric dims str", lambda: tt.Antisymmetric(dims="a")),
    ("Toeplitz float dim", lambda: tt.Toeplitz(dims=(0, 1.7))),
    ("Circulant one dim", lambda: tt.Circulant(dims=(0,))),
    ("Hankel three dims", lambda: tt.Hankel(dims=(0, 1, 2))),
    ("KernelSymmetry unknown", lambda: tt.KernelSymmetry("X")),
    ("TileShare 0", lambda: tt.TileShare(0)),
    ("TileShare float", lambda: tt.TileShare(2.5)),
    ("ShareAlong str", lambda: tt.ShareAlong("a")),
    ("ShareAcrossGroups 0", lambda: tt.ShareAcrossGroups(0)),
    ("ShareAcrossGroups float", lambda: tt.ShareAcrossGroups(1.9)),
    ("from_relation sign 2", lambda: tt.Tie.from_relation(lambda i, j: (j, i), sign=2)),
    # ties on shapes they refuse
    ("Symmetric on 4x3", lambda: tt.Symmetric().layout((4, 3))),
    ("D4 on 3x4", lambda: tt.KernelSymmetry("D4").layout((2, 3, 4))),
    ("ShareAcrossGroups indivisible", lambda: tt.ShareAcrossGroups(3).layout((4, 2))),
    ("dims beyond the shape", lambda: tt.ShareAlong(3).layout((2, 2))),
    ("layout of a float shape", lambda: tt.Toeplitz().layout((2.5, 4))),
    ("TieLayout n_free", lambda: tt.TieLayout(torch.zeros(3, dtype=torch.long), 5)),
    # applying ties
    ("register_tie on a non-module", lambda: tt.register_tie(3, "weight", tt.Symmetric())),
    ("register_tie name int", lambda: tt.register_tie(nn.Linear(3, 3), 3, tt.Symmetric())),
    ("register_tie non-tie", lambda: tt.register_tie(nn.Linear(3, 3), "weight", 3)),
    (
        "register_tie missing tensor",
        lambda: tt.register_tie(nn.Linear(3, 3), "nope", tt.Symmetric()),
    ),
    ("register_tie twice", lambda: tt.register_tie(_tied_linear(), "weight", tt.Symmetric())),
    (
        "register_tie bad init",
        lambda: tt.register_tie(nn.Linear(3, 3), "weight", tt.Symmetric(), init="x"),
    ),
    ("remove_tie untied", lambda: tt.remove_tie(nn.Linear(3, 3), "weight")),
    ("tie_tensors one tensor", lambda: tt.tie_tensors([(nn.Linear(3, 3), "weight")])),
    ("tie_modules non-types", lambda: tt.tie_modules(nn.Linear(3, 3), tt.Symmetric(), types=3)),
    (
        "tie_model unknown name",
        lambda: tt.tie_model(nn.Linear(3, 3), {"nope.weight": tt.Symmetric()}),
    ),
    ("load_dense_state_dict non-module", lambda: tt.load_dense_state_dict(3, {})),
    (
        "load_dense_state_dict wrong shape",
        lambda: tt.load_dense_state_dict(
            _tied_linear(), {"weight": torch.zeros(2, 2), "bias": torch.zeros(3)}
        ),
    ),
    ("assign a wrong shape", lambda: setattr(_tied_linear(), "weight", torch.zeros(2, 2))),
    ("render_layout non-tie", lambda: tt.render_layout(3)),
    ("render_layout without a shape", lambda: tt.render_layout(tt.Symmetric())),
    # locally connected layers: arguments and inputs
    ("LC kernel 0", lambda: _lc(kernel_size=0)),
    ("LC stride 0", lambda: _lc(stride=0)),
    ("LC negative padding", lambda: _lc(padding=-1)),
    ("LC unknown padding", lambda: _lc(padding="bogus")),
    ("LC kernel str", lambda: _lc(kernel_size="3")),
    ("LC groups", lambda: _lc(groups=2)),
    ("LC implementation", lambda: _lc(implementation="x")),
    ("LC no output location", lambda: _lc(kernel_size=9)),
    ("LC same with stride", lambda: _lc(padding="same", stride=2)),
    ("LC tie not on locations", lambda: _lc(tie=tt.Symmetric(dims=(2, 3)))),
    ("LC1d kernel 0", lambda: tt.LocallyConnected1d(3, 4, 0, input_size=8)),
    (
        "LC transpose string padding",
        lambda: tt.LocallyConnectedTranspose2d(3, 4, 3, input_size=(8, 8), padding="same"),
    ),
    (
        "LC transpose output_padding",
        lambda: tt.LocallyConnectedTranspose2d(
            3, 4, 3, input_size=(8, 8), stride=2, output_padding=2
        ),
    ),
    ("LC input rank", lambda: _lc_forward(torch.zeros(8, 8))),
    ("LC input channels", lambda: _lc_forward(torch.zeros(1, 2, 8, 8))),
    ("LC input size", lambda: _lc_forward(torch.zeros(1, 3, 9, 9))),
    ("LC input dtype", lambda: _lc_forward(torch.zeros(1, 3, 8, 8, dtype=torch.float64))),
    ("unshare a Linear", lambda: tt.unshare(nn.Linear(2, 2), (4, 4))),
    (
        "unshare reflect padding",
        lambda: tt.unshare(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (6, 6)),
    ),
    (
        "unshare a 3-d transposed conv",
        lambda: tt.unshare(nn.ConvTranspose3d(2, 2, 3), (6, 6, 6)),
    ),
    (
        "unshare without a size",
        lambda: tt.unshare(nn.Conv2d(2, 2, 3)),
    ),
    # tietorch.testing
    ("check_tie non-tie", lambda: check_tie(3)),
    ("check_tie max_examples 0", lambda: check_tie(tt.Symmetric(), max_examples=0)),
    ("check_tie no shapes", lambda: check_tie(tt.Symmetric(), shapes=[])),
    ("check_tie refused shape", lambda: check_tie(tt.Symmetric(), shapes=[(4, 3)])),
    ("shapes_for non-tie", lambda: _materialize(strategies.shapes_for(3))),
    (
        "shapes_for max_side 0",
        lambda: _materialize(strategies.shapes_for(tt.Symmetric(), max_side=0)),
    ),
    (
        "thetas integer dtype",
        lambda: _materialize(strategies.thetas(tt.Symmetric().layout((2, 2)), dtype=torch.int64)),
    ),
]


@pytest.mark.parametrize("call", [c for _, c in BAD], ids=[name for name, _ in BAD])
def test_every_deliberate_error_is_a_tietorch_error(call: Callable[[], Any]) -> None:
    with pytest.raises(Exception) as info:
        call()
    error = info.value
    assert isinstance(error, TietorchError), f"{type(error).__name__}: {error}"
    assert isinstance(error, (ValueError, TypeError)), "still the built-in class it was"

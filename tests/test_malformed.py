"""Every malformed declaration or argument gets a clear error: one row per case.

Each row names the call, the error class expected (from ``tietorch.errors``, so the old
``except ValueError/TypeError`` keep working) and fragments the message must contain (the tie,
the tensor, the shape, what was expected). No row may end in a bare torch traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tietorch as tt
from tietorch.errors import (
    CheckpointError,
    DeclarationError,
    ShapeError,
    TargetError,
    TietorchError,
    TieTypeError,
)


def _key(value: Any) -> tt.Tie:
    return tt.Tie.from_key(lambda i, j: value, name="bad_key")


def _sign(value: Any) -> tt.Tie:
    return tt.Tie.from_relation(lambda i, j: (j, i), sign=lambda i, j: value, name="bad_sign")


class BothKeyAndRelations(tt.Tie):
    def key(self, i, j):
        return i - j

    def relations(self, i, j):
        return (j, i)


class TupleLayout(tt.Tie):
    def layout(self, shape):
        return (torch.zeros(shape, dtype=torch.long), 1)


class BoolRelation(tt.Tie):
    def relations(self, i, j):
        return (i > 0, j > 0)


class EmptyRelations(tt.Tie):
    def relations(self, i, j):
        return []


def _tied_linear() -> nn.Linear:
    lin = nn.Linear(3, 3)
    tt.register_tie(lin, "weight", tt.Symmetric())
    return lin


def _tied_with(tie: tt.Tie) -> nn.Linear:
    lin = nn.Linear(3, 3)
    tt.register_tie(lin, "weight", tie)
    return lin


def _inference_linear() -> nn.Linear:
    with torch.inference_mode():
        return nn.Linear(3, 3)


def _register(tie: tt.Tie, shape: tuple[int, int] = (3, 3)) -> Callable[[], Any]:
    def call() -> Any:
        module = nn.Module()
        module.weight = nn.Parameter(torch.randn(shape))
        return tt.register_tie(module, "weight", tie)

    return call


CASES: list[tuple[str, Callable[[], Any], type[Exception], tuple[str, ...]]] = [
    ("key None", _register(_key(None)), TieTypeError, ("bad_key", "NoneType", "(3, 3)")),
    ("key str", _register(_key("ij")), TieTypeError, ("bad_key", "str", "(3, 3)")),
    ("key list", _register(_key([1, 2])), TieTypeError, ("bad_key", "list", "tuple")),
    ("key complex", _register(_key(torch.ones(3, 3) * 1j)), TieTypeError, ("complex",)),
    (
        "key uint64",
        _register(_key(torch.ones(3, 3, dtype=torch.uint64))),
        TieTypeError,
        ("uint64", "int64"),
    ),
    (
        "key NaN",
        _register(_key(torch.full((3, 3), float("nan")))),
        DeclarationError,
        ("NaN", "finite", "(3, 3)"),
    ),
    (
        "key inf",
        _register(_key(torch.full((3, 3), float("inf")))),
        DeclarationError,
        ("bad_key", "finite", "(3, 3)"),
    ),
    ("sign None", _register(_sign(None)), TieTypeError, ("bad_sign", "NoneType")),
    ("sign list", _register(_sign([1, -1])), DeclarationError, ("bad_sign", "2 signs", "(3, 3)")),
    (
        "sign uint64",
        _register(_sign(torch.ones(3, 3, dtype=torch.uint64))),
        TieTypeError,
        ("bad_sign", "uint64", "int64"),
    ),
    ("sign str", _register(_sign("-")), TieTypeError, ("bad_sign", "str")),
    ("sign complex", _register(_sign(torch.ones(3, 3) * 1j)), TieTypeError, ("complex",)),
    ("sign bool", _register(_sign(torch.ones(3, 3, dtype=torch.bool))), DeclarationError, ("+1",)),
    ("relations []", _register(EmptyRelations()), DeclarationError, ("no relation",)),
    ("relations bool", _register(BoolRelation()), TieTypeError, ("bool", "mask")),
    (
        "key and relations",
        _register(BothKeyAndRelations()),
        DeclarationError,
        ("not both", "&"),
    ),
    ("layout tuple", _register(TupleLayout()), DeclarationError, ("tuple", "TieLayout", "(3, 3)")),
    ("shape float", lambda: tt.Toeplitz().layout((2.5, 4)), TieTypeError, ("Toeplitz", "2.5")),
    ("shape bool", lambda: tt.Toeplitz().layout((True, 4)), TieTypeError, ("True",)),
    (
        "shape a tie refuses",
        lambda: tt.tie_model(
            nn.ModuleDict(dict(a=nn.Linear(3, 3), c=nn.Linear(3, 4))),
            {"a.weight": tt.Symmetric(), "c.weight": tt.Symmetric()},
        ),
        ShapeError,
        ("c.weight", "Symmetric", "(4, 3)"),
    ),
    ("shape negative", lambda: tt.Toeplitz().layout((-1, 4)), ShapeError, (">= 0",)),
    (
        "n_free float",
        lambda: tt.TieLayout(torch.tensor([0, 1]), 2.7),
        TieTypeError,
        ("n_free", "2.7"),
    ),
    ("n_free bool", lambda: tt.TieLayout(torch.tensor([0, 0]), True), TieTypeError, ("n_free",)),
    (
        "index bool",
        lambda: tt.TieLayout(torch.tensor([True, False]), 1),
        TieTypeError,
        ("index", "integer", "bool"),
    ),
    (
        "huge shape",
        lambda: tt.Toeplitz().layout((2**30, 2**30)),
        ShapeError,
        ("GiB", "(1073741824, 1073741824)", "Toeplitz"),
    ),
    (
        "numel 2**63",
        lambda: tt.ShareAlong(0).layout((2**63,)),
        ShapeError,
        ("more than a tensor", "ShareAlong", "(9223372036854775808,)"),
    ),
    (
        "float8 parameter",
        lambda: tt.register_tie(nn.Linear(2, 2).to(torch.float8_e4m3fn), "weight", tt.Symmetric()),
        TieTypeError,
        ("Linear.weight", "float8_e4m3fn", "(2, 2)"),
    ),
    (
        "running_mean",
        lambda: tt.register_tie(nn.BatchNorm1d(4), "running_mean", tt.ShareAlong(0)),
        TargetError,
        ("BatchNorm1d.running_mean", "(4,)", "in place"),
    ),
    (
        "inference mode",
        lambda: tt.register_tie(_inference_linear(), "weight", tt.Symmetric()),
        TargetError,
        ("Linear.weight", "inference_mode", "(3, 3)"),
    ),
    (
        "dense numpy",
        lambda: tt.load_dense_state_dict(
            _tied_linear(), {"weight": np.eye(3), "bias": torch.zeros(3)}
        ),
        TieTypeError,
        ("'weight'", "ndarray", "(3, 3)"),
    ),
    (
        "dense list",
        lambda: tt.load_dense_state_dict(_tied_linear(), {"weight": [[0.0] * 3] * 3}),
        TieTypeError,
        ("'weight'", "list"),
    ),
    (
        "dense + wrong free vector",
        lambda: tt.load_dense_state_dict(
            _tied_linear(),
            {
                "weight": torch.eye(3),
                "parametrizations.weight.original": torch.zeros(5),
                "bias": torch.zeros(3),
            },
        ),
        CheckpointError,
        ("parametrizations.weight.original", "6 entries", "(5,)"),
    ),
    (
        "state dict not a mapping",
        lambda: tt.load_dense_state_dict(_tied_linear(), [1]),
        TieTypeError,
        ("mapping",),
    ),
    (
        "checkpoint of another tie",
        lambda: _tied_with(tt.Toeplitz()).load_state_dict(_tied_with(tt.Hankel()).state_dict()),
        CheckpointError,
        ("weight", "Hankel", "Toeplitz", "(3, 3)", "5 free parameters"),
    ),
    ("summary str", lambda: tt.summary("model"), TieTypeError, ("nn.Module", "str")),
    (
        "tie_modules types str",
        lambda: tt.tie_modules(nn.Sequential(nn.Linear(2, 2)), tt.Symmetric(), types="Linear"),
        TieTypeError,
        ("types", "'Linear'", "torch.nn.Linear"),
    ),
    (
        "register_tie not a tie",
        lambda: tt.register_tie(nn.Linear(2, 2), "weight", "Symmetric"),
        TieTypeError,
        ("Linear.weight", "str"),
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input_gets_a_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, TietorchError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def _square_tie_on_4x3(how: str) -> None:
    model = nn.Module()
    model.c = nn.Linear(3, 4)
    if how == "register_tie":
        tt.register_tie(model.c, "weight", tt.Symmetric())
    elif how == "tie_modules":
        tt.tie_modules(model, tt.Symmetric(), types=nn.Linear)
    elif how == "tie_model":
        tt.tie_model(model, {"c.weight": tt.Symmetric()})
    elif how == "tie_tensors":
        tt.tie_tensors(
            [(model.c, "weight"), (nn.Linear(3, 4), "weight")], ties=[tt.Symmetric(), None]
        )
    else:
        tt.Symmetric().layout((4, 3))


@pytest.mark.parametrize(
    "how", ["register_tie", "tie_modules", "tie_model", "tie_tensors", "layout"]
)
def test_an_error_names_the_tie_and_the_shape_once(how):
    with pytest.raises(tt.errors.ShapeError) as info:
        _square_tie_on_4x3(how)
    message = str(info.value)
    assert message.count("Symmetric(dims=(0, 1))") == 1, message
    assert message.count("(4, 3)") == 1, message
    assert message.endswith("needs dims (0, 1) of equal size (they are swapped)")
    assert how == "layout" or message.startswith(how), message


def test_a_refused_buffer_names_the_tie():
    with pytest.raises(
        tt.errors.TargetError, match=r"running_mean of shape \(3,\) with ShareAlong"
    ):
        tt.register_tie(nn.BatchNorm1d(3), "running_mean", tt.ShareAlong(0))

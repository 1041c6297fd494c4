"""Every public call that changes modules completes or leaves them exactly as they were.

For each call, a dry run counts the calls it makes to each internal step; then, for every
step and every n, a fresh model is built, the n-th call of that step is made to raise, and the
model is compared with a snapshot taken before: the same module and Parameter objects, equal
values, the same classes, state-dict keys and hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt
import tietorch._group
import tietorch._parametrization
import tietorch._register
from tietorch.errors import CheckpointError
from tietorch.layers import LocallyConnected1d, LocallyConnected2d
from tietorch.ties import TileShare


class Injected(RuntimeError):
    pass


# (object, attribute): the internal steps a failure is injected into.
STEPS: list[tuple[Any, str]] = [
    (parametrize, "register_parametrization"),
    (parametrize, "remove_parametrizations"),
    (tietorch._register, "_install"),
    (tietorch._group, "_install"),
    (tietorch._parametrization, "own_class_behaviour"),
    (tietorch._parametrization, "register_load_pre_hook"),
    (tietorch._register, "register_tie"),
    (tietorch._group, "register_tie"),
    (tietorch._register, "remove_tie"),
    (tietorch._parametrization.TieParametrization, "right_inverse"),
    (nn.Module, "register_buffer"),
    (nn.Module, "register_parameter"),
    (nn.Module, "_load_from_state_dict"),
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict(
        dict(
            enc=nn.Linear(4, 3),
            dec=nn.Linear(3, 4),
            mix=nn.Linear(4, 4),
            convs=nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)),
        )
    )


def _tied_model() -> nn.Module:
    model = _model()
    tt.tie_model(model, {("enc.weight", "dec.weight"): lambda i, j: (j, i)})
    tt.register_tie(model["mix"], "weight", tt.Symmetric())
    tt.tie_modules(model, tt.KernelSymmetry("D4"))
    return model


def _dense_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return tt.dense_state_dict(_tied_model())


def _layers() -> nn.Module:
    """The locally connected layers, tied through their own ``tie=`` (weight and bias)."""
    torch.manual_seed(0)
    return nn.Sequential(
        LocallyConnected2d(2, 3, 3, (6, 6), tie=TileShare(2) & tt.KernelSymmetry("D4")),
        LocallyConnected1d(3, 2, 3, 4, tie=TileShare(2, dims=0)),
    )


def _dense_layers_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return tt.dense_state_dict(_layers())


def _layers_checkpoint() -> dict[str, torch.Tensor]:
    """A tied checkpoint of the layers, the first one's free vectors given as dense entries."""
    torch.manual_seed(2)
    state = _layers().state_dict()
    dense = _dense_layers_state()
    for name in ("weight", "bias"):
        del state[f"0.parametrizations.{name}.original"]
        state[f"0.{name}"] = dense[f"0.{name}"]
    return state


CALLS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Any]]] = {
    "register_tie": (_model, lambda m: tt.register_tie(m["mix"], "weight", tt.Symmetric())),
    "tie_tensors": (
        _model,
        lambda m: tt.tie_tensors(
            [(m["enc"], "weight"), (m["dec"], "weight")],
            relation=lambda i, j: (j, i),
            ties=[tt.ShareAlong(1), None],
        ),
    ),
    "tie_model": (
        _model,
        lambda m: tt.tie_model(
            m,
            {
                ("enc.weight", "dec.weight"): lambda i, j: (j, i),
                "mix.weight": tt.Symmetric(),
                "convs.0.weight": tt.KernelSymmetry("D4"),
            },
        ),
    ),
    "tie_modules": (_model, lambda m: tt.tie_modules(m, tt.KernelSymmetry("D4"))),
    "remove_tie follower": (_tied_model, lambda m: tt.remove_tie(m["dec"], "weight")),
    "remove_tie": (_tied_model, lambda m: tt.remove_tie(m["mix"], "weight")),
    "bake": (_tied_model, tt.bake),
    "load_dense_state_dict": (_tied_model, lambda m: tt.load_dense_state_dict(m, _dense_state())),
    "layers: load_dense_state_dict": (
        _layers,
        lambda m: tt.load_dense_state_dict(m, _dense_layers_state()),
    ),
    "layers: load_dense_state_dict, mixed checkpoint": (
        _layers,
        lambda m: tt.load_dense_state_dict(m, _layers_checkpoint()),
    ),
    "layers: bake": (_layers, tt.bake),
}


def _snapshot(model: nn.Module) -> dict[str, Any]:
    modules = list(model.modules())
    return dict(
        modules=[id(m) for m in modules],
        classes=[type(m) for m in modules],
        parameters=[(n, id(p), p.shape, p.requires_grad) for n, p in model.named_parameters()],
        values=[p.detach().clone() for p in model.parameters()],
        buffers=[(n, id(b)) for n, b in model.named_buffers()],
        keys=list(model.state_dict()),
        state=[v.clone() for v in model.state_dict().values()],
        hooks=[
            (len(m._load_state_dict_pre_hooks), len(m._state_dict_hooks), len(m._forward_hooks))
            for m in modules
        ],
        weights=[
            m.weight.detach().clone()
            for m in modules
            if isinstance(getattr(m, "weight", None), torch.Tensor)
        ],
    )


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("modules", "classes", "parameters", "buffers", "keys", "hooks"):
        assert a[key] == b[key], key
    for key in ("values", "state", "weights"):
        assert len(a[key]) == len(b[key]) and all(
            torch.equal(x, y) for x, y in zip(a[key], b[key])
        ), key


def _counting(monkeypatch: pytest.MonkeyPatch, fail_at: dict[tuple[int, str], int]) -> dict:
    counts: dict[tuple[int, str], int] = {}
    for owner, attr in STEPS:
        original = getattr(owner, attr)
        key = (id(owner), attr)

        def wrapper(*args: Any, __original: Any = original, __key: Any = key, **kw: Any) -> Any:
            counts[__key] = counts.get(__key, 0) + 1
            if fail_at.get(__key) == counts[__key]:
                raise Injected(f"injected failure in call {counts[__key]} of {__key[1]}")
            return __original(*args, **kw)

        monkeypatch.setattr(owner, attr, wrapper)
    return counts


@pytest.mark.parametrize("name", list(CALLS))
def test_a_failure_at_any_step_leaves_every_module_as_it_was(name, monkeypatch):
    build, call = CALLS[name]
    with monkeypatch.context() as patch:
        model = build()
        counts = _counting(patch, {})
        call(model)
    counts = dict(counts)
    assert counts, "the call reached none of the internal steps"
    injected = 0
    for key, total in counts.items():
        for n in range(1, total + 1):
            model = build()
            before = _snapshot(model)
            with monkeypatch.context() as patch:
                _counting(patch, {key: n})
                with pytest.raises(Injected):
                    call(model)
            _same(before, _snapshot(model))
            injected += 1
            # and the model still works: the call succeeds afterwards
            if n == total:
                call(model)
    assert injected >= 2


def test_a_refused_checkpoint_leaves_every_module_as_it_was():
    """The tie identity check, in the middle of a load: nothing is written."""
    model = _tied_model()
    saved = _model()  # convs.1 tied with other classes of the same count (12 free parameters)
    tt.tie_model(saved, {("enc.weight", "dec.weight"): lambda i, j: (j, i)})
    tt.register_tie(saved["mix"], "weight", tt.Symmetric())
    tt.register_tie(saved["convs"][0], "weight", tt.KernelSymmetry("D4"))
    rows = tt.Tie.from_key(lambda o, i, r, c: (o, i, r), name="rows")
    tt.register_tie(saved["convs"][1], "weight", rows)
    state = saved.state_dict()
    state["mix.weight"] = torch.randn(4, 4)  # a dense entry among the free vectors
    del state["mix.parametrizations.weight.original"]
    before = _snapshot(model)
    with pytest.raises(CheckpointError, match=r"^convs\.1\.weight.*rows.*D4"):
        tt.load_dense_state_dict(model, state)
    _same(before, _snapshot(model))

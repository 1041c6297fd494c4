"""Ties on the meta device: declared there, materialized with ``to_empty`` and loaded exactly.

The reference for every check is the same model built and tied on the CPU (real values), whose
state dict is loaded into the meta-built one; accelerate is the real library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch
from tietorch.layers import LocallyConnected2d


class TiedLM(nn.Module):
    """Embedding = output layer (cross-tensor tie) and a symmetric square projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 12, bias=False)
        tietorch.tie_tensors([(self.embed, "weight"), (self.head, "weight")])
        tietorch.register_tie(self.mix, "weight", tietorch.Symmetric())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


@pytest.fixture
def default_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device("cpu")


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_layout_solved_on_cpu_under_meta_default() -> None:
    reference = tietorch.Symmetric().layout((3, 3))
    with torch.device("meta"):
        layout = tietorch.Symmetric().layout((3, 3))
        group_layout = tietorch.TileShare(2).layout((4, 6))
    assert layout.index.device.type == "cpu" and group_layout.index.device.type == "cpu"
    assert torch.equal(layout.index, reference.index) and layout.n_free == 6  # n(n+1)/2


def test_layout_solved_on_cpu_under_set_default_device(default_meta: None) -> None:
    layout = tietorch.Antisymmetric().layout((4, 4))
    assert layout.index.device.type == "cpu"
    assert layout.n_free == 6 and layout.n_zero == 4  # n(n-1)/2 free, diagonal forced to zero


def test_register_tie_on_meta_tensor() -> None:
    layer = nn.Linear(5, 5, device="meta")
    error = tietorch.register_tie(layer, "weight", tietorch.Symmetric())
    assert math.isnan(error)  # not computed: a meta tensor has no values
    theta = layer.parametrizations.weight.original
    assert theta.is_meta and theta.shape == (15,)
    assert layer.weight.is_meta and layer.weight.shape == (5, 5)


def test_tie_model_and_tie_modules_inside_meta_context() -> None:
    with torch.device("meta"):
        lm = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
        errors = tietorch.tie_model(lm, {("0.weight", "1.weight"): None})
        convs = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
        module_errors = tietorch.tie_modules(convs, tietorch.SymmetricFlip())
    assert all(math.isnan(e) for e in [*errors.values(), *module_errors.values()])
    assert lm[0].parametrizations.weight.original.shape == (40,)
    assert all(p.is_meta for p in [*lm.parameters(), *convs.parameters()])


@pytest.mark.parametrize(
    "build",
    [
        TiedLM,
        lambda: LocallyConnected2d(2, 3, 3, (6, 6), tie=tietorch.TileShare(2)),
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
    ],
    ids=["tie_tensors+register_tie", "locally_connected", "tie_modules"],
)
def test_to_empty_then_load_state_dict_is_exact(build: Callable[[], nn.Module]) -> None:
    def tied() -> nn.Module:
        model = build()
        if isinstance(model, nn.Sequential):
            tietorch.tie_modules(model, tietorch.KernelSymmetry("D4"))
        return model

    torch.manual_seed(0)
    reference = tied()
    with torch.device("meta"):
        model = tied()
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    _same_state(model, reference)
    x = torch.randint(0, 12, (3, 4)) if isinstance(reference, TiedLM) else torch.randn(2, 2, 6, 6)
    assert torch.equal(model(x), reference(x))
    # The tie still holds after loading: one free vector, both tensors read it.
    if isinstance(model, TiedLM):
        assert torch.equal(model.embed.weight, model.head.weight)
        assert torch.equal(model.mix.weight, model.mix.weight.T)


def test_initialize_after_to_empty_by_assignment() -> None:
    """Initializing instead of loading: assigning a dense tensor projects it onto the tie."""
    with torch.device("meta"):
        layer = nn.Linear(4, 4)
        tietorch.register_tie(layer, "weight", tietorch.Symmetric())
    layer.to_empty(device="cpu")
    dense = torch.randn(4, 4)
    layer.weight = dense
    assert torch.allclose(layer.weight, (dense + dense.T) / 2)  # the projection's formula


def test_accelerate_init_empty_weights_then_load_checkpoint_and_dispatch(tmp_path) -> None:
    accelerate = pytest.importorskip("accelerate")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(1)
    reference = TiedLM()
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(reference.state_dict(), str(path))
    with accelerate.init_empty_weights():
        model = TiedLM()
    assert all(p.is_meta for p in model.parameters())
    model = accelerate.load_checkpoint_and_dispatch(model, str(path), device_map={"": "cpu"})
    _same_state(model, reference)
    ids = torch.randint(0, 12, (2, 5))
    assert torch.equal(model(ids), reference(ids))
    assert torch.equal(model.embed.weight, model.head.weight)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    members=st.integers(2, 4),
)
def test_plain_group_layout_equals_the_solvers(shape: tuple[int, ...], members: int) -> None:
    """Equal tensors of equal shapes skip the solver: the same layout as solving them (an
    identity relation goes through the solver)."""
    from tietorch._group import _solve_group

    def tensors() -> list[tuple[nn.Module, str]]:
        return [(_Holder(shape), "w") for _ in range(members)]

    fast = _solve_group(tensors(), None, 1, None, None).layout
    solved = _solve_group(tensors(), lambda *grid: grid, 1, None, None).layout
    assert fast.n_free == solved.n_free
    assert torch.equal(fast.index, solved.index) and fast.sign is None and solved.sign is None
    with torch.device("meta"):  # built on the CPU whatever the default device
        meta = _solve_group(tensors(), None, 1, None, None).layout
    assert meta.index.device.type == "cpu" and torch.equal(meta.index, solved.index)


class _Holder(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))

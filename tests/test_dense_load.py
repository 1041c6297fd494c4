"""Plain ``load_state_dict`` of a dense checkpoint (what ``save_pretrained`` and
``dense_state_dict`` write): a dense tensor that satisfies its tie loads bit for bit as the free
vector; one that does not is refused, with the model unchanged."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch

TIES = {
    "Symmetric": (tietorch.Symmetric(), (5, 5)),
    "Antisymmetric": (tietorch.Antisymmetric(), (4, 4)),
    "Toeplitz": (tietorch.Toeplitz(), (3, 6)),
    "SymmetricFlip": (tietorch.SymmetricFlip(), (3, 3, 3, 3)),
    "D4": (tietorch.KernelSymmetry("D4"), (2, 3, 5, 5)),
    "ShareAlong": (tietorch.ShareAlong(1), (4, 6)),
}


class Holder(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape))


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(TIES)), seed=st.integers(0, 2**16))
def test_a_dense_tensor_that_satisfies_its_tie_loads_bit_for_bit(name: str, seed: int) -> None:
    tie, shape = TIES[name]
    torch.manual_seed(seed)
    source, target = Holder(shape), Holder(shape)
    tietorch.register_tie(source, "weight", tie)
    tietorch.register_tie(target, "weight", tie)
    dense = tietorch.dense_state_dict(source)
    assert set(dense) == {"weight"}
    result = target.load_state_dict(dense)  # strict: no missing, no unexpected key
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(target.weight, source.weight)
    assert torch.equal(
        target.parametrizations.weight.original, source.parametrizations.weight.original
    )


@pytest.mark.parametrize("name", sorted(TIES))
def test_a_dense_tensor_off_its_tie_is_refused_and_nothing_changes(name: str) -> None:
    tie, shape = TIES[name]
    target = Holder(shape)
    tietorch.register_tie(target, "weight", tie)
    before = target.parametrizations.weight.original.detach().clone()
    off = {"weight": torch.randn(shape)}  # an untied tensor: not on the tie
    with pytest.raises(tietorch.errors.CheckpointError, match="does not satisfy that tie"):
        target.load_state_dict(off)
    assert torch.equal(target.parametrizations.weight.original, before)


def _pair(owner_first: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    """An embedding and an output layer in one group; the owner is loaded first or last."""
    emb, head = nn.Embedding(7, 3), nn.Linear(3, 7, bias=False)
    net = nn.Sequential(emb, head)
    pair = [(emb, "weight"), (head, "weight")]
    tietorch.tie_tensors(pair if owner_first else pair[::-1])
    return net, emb, head


@pytest.mark.parametrize("owner_first", [True, False])
def test_a_group_loads_from_dense_in_either_order(owner_first: bool) -> None:
    torch.manual_seed(0)
    source, *_ = _pair(owner_first)
    target, emb, head = _pair(owner_first)
    dense = tietorch.dense_state_dict(source)
    assert set(dense) == {"0.weight", "1.weight"}
    result = target.load_state_dict(dense)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(emb.weight, source[0].weight) and torch.equal(head.weight, emb.weight)


@pytest.mark.parametrize("owner_first", [True, False])
@pytest.mark.parametrize("wrong", ["0.weight", "1.weight"])
def test_a_group_member_that_disagrees_is_refused(owner_first: bool, wrong: str) -> None:
    source, *_ = _pair(owner_first)
    target, *_ = _pair(owner_first)
    dense = tietorch.dense_state_dict(source)
    dense[wrong] = dense[wrong] + 1  # embedding and output layer no longer equal
    with pytest.raises(tietorch.errors.CheckpointError, match="does not satisfy that tie"):
        target.load_state_dict(dense)


def test_the_compact_state_dict_still_loads() -> None:
    source, *_ = _pair(True)
    target, emb, _ = _pair(True)
    target.load_state_dict(source.state_dict())
    assert torch.equal(emb.weight, source[0].weight)

"""A checkpoint carries the identity of each tie, and loading it into another tie is refused.

The identity is a fingerprint of the solved layout (shape, ``n_free``, every entry's index and
sign) in the state dict's ``_metadata``: the keys and tensors of the state dict are unchanged,
so ``torch.load(weights_only=True)`` reads it and plain dicts and safetensors load as before
(without the check: they carry no metadata).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch as tt
from tietorch import TieLayout
from tietorch.errors import CheckpointError


def _linear(tie: tt.Tie, seed: int = 0, n: int = 5) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n, n)
    tt.register_tie(lin, "weight", tie)
    return lin


def _through_disk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _values(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_a_toeplitz_checkpoint_is_refused_by_a_hankel_layer_and_changes_nothing():
    saved = _through_disk(_linear(tt.Toeplitz()).state_dict())
    hankel = _linear(tt.Hankel(), seed=1)
    before = _values(hankel)
    # Same number of free parameters: the sizes alone cannot tell them apart.
    assert hankel.parametrizations.weight.original.shape == (9,)
    with pytest.raises(CheckpointError) as info:
        hankel.load_state_dict(saved)
    message = str(info.value)
    for fragment in ("Toeplitz", "Hankel", "(5, 5)", "9 free parameters", "load_dense_state_dict"):
        assert fragment in message, (fragment, message)
    assert all(torch.equal(a, b) for a, b in zip(before, _values(hankel)))
    with pytest.raises(CheckpointError):  # strict=False is about keys, not about wrong values
        hankel.load_state_dict(saved, strict=False)


def test_the_same_tie_round_trips_through_weights_only_load():
    source, target = _linear(tt.Toeplitz(), seed=0), _linear(tt.Toeplitz(), seed=1)
    assert target.load_state_dict(_through_disk(source.state_dict())).missing_keys == []
    assert torch.equal(source.weight, target.weight)


def test_the_check_compares_layouts_not_names():
    # Another declaration of the same classes (the solver numbers classes by first entry), and
    # the same tie on other dims: the free vector means the same weights, so it loads.
    for tie in (tt.Tie.from_key(lambda i, j: j - i, name="diagonals"), tt.Toeplitz(dims=(0, 1))):
        source, target = _linear(tie), _linear(tt.Toeplitz(), seed=1)
        assert repr(tie) != repr(tt.Toeplitz())
        target.load_state_dict(_through_disk(source.state_dict()))
        assert torch.equal(source.weight, target.weight)


class Numbered(tt.Tie):
    """One tie, whose class numbering depends on a flag its repr does not show."""

    def __init__(self, reverse: bool) -> None:
        self.reverse = reverse

    def layout(self, shape):
        index = torch.arange(shape[0]).view(-1, 1).expand(shape).contiguous()
        return TieLayout(shape[0] - 1 - index if self.reverse else index, shape[0])

    def __repr__(self) -> str:
        return "Numbered()"


def test_same_repr_but_other_numbering_is_refused_with_a_message_that_says_so():
    source, target = _linear(Numbered(False)), _linear(Numbered(True))
    with pytest.raises(CheckpointError, match=r"same tie.*numbered otherwise"):
        target.load_state_dict(source.state_dict())


def test_the_record_can_be_deleted_to_load_anyway():
    saved = _through_disk(_linear(tt.Toeplitz()).state_dict())
    hankel = _linear(tt.Hankel(), seed=1)
    del saved._metadata[""]["tietorch"]  # the step the error message names
    hankel.load_state_dict(saved)
    assert torch.equal(
        hankel.parametrizations.weight.original, saved["parametrizations.weight.original"]
    )


def test_checkpoints_without_metadata_load_as_before():
    """A plain dict, a safetensors file and a checkpoint of an older tietorch have no record."""
    from safetensors.torch import load, save

    source = _linear(tt.Toeplitz())
    plain = dict(source.state_dict())
    old = source.state_dict()
    for entry in old._metadata.values():
        entry.pop("tietorch", None)
    for state in (plain, load(save(source.state_dict())), old):
        target = _linear(tt.Toeplitz(), seed=1)
        target.load_state_dict(state)
        assert torch.equal(source.weight, target.weight)


def test_the_record_is_plain_data_and_leaves_the_keys_alone():
    lin = _linear(tt.Symmetric())
    state = lin.state_dict()
    assert list(state) == ["bias", "parametrizations.weight.original"]
    record = state._metadata[""]["tietorch"]["weight"]
    assert record["tie"] == repr(tt.Symmetric()) and record["shape"] == [5, 5]
    assert record["n_free"] == 15 and isinstance(record["layout"], str)
    untied = nn.Linear(5, 5).state_dict()
    assert "tietorch" not in untied._metadata[""]


def test_nested_models_copies_and_pickles_keep_the_check():
    net = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 5)))
    tt.register_tie(net[0], "weight", tt.Toeplitz())
    tt.register_tie(net[2][0], "weight", tt.Toeplitz())
    other = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 5)))
    tt.register_tie(other[0], "weight", tt.Toeplitz())
    tt.register_tie(other[2][0], "weight", tt.Hankel())
    for model in (net, copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        with pytest.raises(CheckpointError, match=r"^2\.0\.weight.*Toeplitz.*Hankel"):
            copy.deepcopy(other).load_state_dict(_through_disk(model.state_dict()))


def test_groups_are_checked_through_the_owners_free_vector():
    def group(relation):
        torch.manual_seed(0)
        model = nn.ModuleDict(dict(a=nn.Linear(4, 4), b=nn.Linear(4, 4)))
        tt.tie_tensors([(model["a"], "weight"), (model["b"], "weight")], relation=relation)
        return model

    transposed = group(lambda i, j: (j, i))
    flipped = group(lambda i, j: (3 - i, j))
    group(lambda i, j: (j, i)).load_state_dict(transposed.state_dict())
    with pytest.raises(CheckpointError, match=r"^a\.weight"):
        flipped.load_state_dict(transposed.state_dict())


def test_load_dense_state_dict_checks_the_free_vectors_it_passes_through():
    net = nn.ModuleDict(dict(a=nn.Linear(5, 5), b=nn.Linear(5, 5)))
    tt.register_tie(net["a"], "weight", tt.Toeplitz())
    tt.register_tie(net["b"], "weight", tt.Toeplitz())
    target = nn.ModuleDict(dict(a=nn.Linear(5, 5), b=nn.Linear(5, 5)))
    tt.register_tie(target["a"], "weight", tt.Toeplitz())
    tt.register_tie(target["b"], "weight", tt.Hankel())
    mixed = net.state_dict()  # b in tied form, a turned into a dense entry
    del mixed["a.parametrizations.weight.original"]
    mixed["a.weight"] = net["a"].weight.detach().clone()
    before = _values(target)
    with pytest.raises(CheckpointError, match=r"b\.weight.*Toeplitz.*Hankel"):
        tt.load_dense_state_dict(target, mixed)
    assert all(torch.equal(x, y) for x, y in zip(before, _values(target)))
    # into the same ties it loads, and the dense entry's record (none) does not get in the way
    same = nn.ModuleDict(dict(a=nn.Linear(5, 5), b=nn.Linear(5, 5)))
    tt.register_tie(same["a"], "weight", tt.Hankel())  # a is dense: projected onto any tie
    tt.register_tie(same["b"], "weight", tt.Toeplitz())
    errors = tt.load_dense_state_dict(same, mixed)
    assert list(errors) == ["a.weight"] and errors["a.weight"] > 0
    assert torch.equal(same["b"].weight, net["b"].weight)


@st.composite
def _layouts(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    numel = int(torch.tensor(shape).prod())
    labels = draw(st.lists(st.integers(0, 3), min_size=numel, max_size=numel))
    # number the classes by first appearance, so every free parameter is used
    order: dict[int, int] = {}
    index = [order.setdefault(label, len(order)) for label in labels]
    signs = draw(st.none() | st.lists(st.sampled_from([1, -1]), min_size=numel, max_size=numel))
    sign = None if signs is None else torch.tensor(signs).view(shape)
    return TieLayout(torch.tensor(index).view(shape), len(order), sign)


@settings(max_examples=200, deadline=None)
@given(_layouts(), _layouts())
def test_fingerprints_are_equal_exactly_when_the_layouts_are(a, b):
    def signs(layout):
        return torch.ones(layout.shape) if layout.sign is None else layout.sign.float()

    equal = (
        a.shape == b.shape
        and a.n_free == b.n_free
        and torch.equal(a.index, b.index)
        and torch.equal(signs(a), signs(b))
    )
    assert (a.fingerprint() == b.fingerprint()) == equal
    assert a.fingerprint() == TieLayout(a.index.clone(), a.n_free, a.sign).fingerprint()

"""Edge cases found in review: each once failed silently or left a module half-modified."""

import copy

import pytest
import torch
from test_locally_connected import forum_reference
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt
from tietorch.layers import _lc_function as _lc


def transpose(i, j):
    return j, i


def test_a_parameter_shared_by_two_modules_is_refused_not_corrupted():
    emb, head = nn.Embedding(6, 6), nn.Linear(6, 6, bias=False)
    head.weight = emb.weight
    net = nn.ModuleDict(dict(emb=emb, head=head))
    with pytest.raises(ValueError, match=r"emb\.weight and head\.weight are one tensor object"):
        tt.tie_modules(net, tt.Symmetric(), types=(nn.Embedding, nn.Linear))
    with pytest.raises(
        ValueError,
        match=r"Embedding\.weight of shape \(6, 6\) is one nn\.Parameter object also held by "
        r"Linear\.weight",
    ):
        tt.tie_tensors([(emb, "weight"), (head, "weight")])
    with pytest.raises(ValueError, match="one tensor object"):
        tt.tie_model(net, {"emb.weight": tt.Symmetric()})
    assert not parametrize.is_parametrized(emb) and not parametrize.is_parametrized(head)
    assert head.weight.shape == (6, 6)


def test_sparse_multi_part_keys_stay_linear_in_memory():
    # (i - j, i + j) on a 2 x 100000 tensor: packing the parts naively needs ~10^10 codes
    layout = tt.Tie.from_key(lambda i, j: (i - j, i + j)).layout((2, 100_000))
    assert layout.n_free == 200_000  # every entry has its own (i - j, i + j)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_narrow_integer_relations_do_not_overflow(dtype):
    tie = tt.Tie.from_relation(lambda i, j: (j.to(dtype), i.to(dtype)))
    n = 20 if dtype == torch.uint8 else 300
    assert tie.layout((n, n)).n_free == n * (n + 1) // 2


def test_a_buffer_can_be_a_group_member():
    lin, holder = nn.Linear(3, 3), nn.Module()
    holder.register_buffer("w", torch.randn(3, 3))
    tt.tie_tensors([(lin, "weight"), (holder, "w")], relation=transpose)
    assert torch.equal(holder.w, lin.weight.T)
    assert "w" not in holder.state_dict() and not any("original" in k for k in holder.state_dict())


def test_bake_refuses_before_untying_anything():
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tt.tie_modules(net, tt.Symmetric(), types=nn.Linear)
    parametrize.register_parametrization(net[1], "weight", Double())
    with pytest.raises(ValueError, match=r"1\.weight has other parametrizations.*nothing"):
        tt.bake(net)
    assert parametrize.is_parametrized(net[0], "weight")


def test_a_copy_of_a_group_owner_alone_can_be_untied():
    enc, dec = nn.Linear(4, 2), nn.Linear(2, 4)
    tt.tie_tensors([(enc, "weight"), (dec, "weight")], relation=transpose)
    lone = copy.deepcopy(enc)
    tt.bake(lone)  # no member of the copy reads its vector
    assert type(lone) is nn.Linear
    with pytest.raises(ValueError, match="still read"):
        tt.remove_tie(enc, "weight")  # the original still has its member
    both = copy.deepcopy(nn.Sequential(enc, dec))
    with pytest.raises(ValueError, match="still read"):
        tt.remove_tie(both[0], "weight")  # ... and so does a copy of the whole group


def test_a_submodule_whose_owner_is_outside():
    enc, dec = nn.Linear(4, 2), nn.Linear(2, 4)
    tt.tie_tensors([(enc, "weight"), (dec, "weight")], relation=transpose)
    assert "outside this model" in str(tt.summary(dec))
    with pytest.raises(ValueError, match="outside this model"):
        tt.load_dense_state_dict(dec, nn.Linear(2, 4).state_dict())


def test_preserve_std_reports_the_projection_error_of_the_original():
    torch.manual_seed(0)
    a, b = nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
    b.load_state_dict(a.state_dict())
    assert tt.register_tie(a, "weight", tt.ShareAlong(1)) == pytest.approx(
        tt.register_tie(b, "weight", tt.ShareAlong(1), init="preserve_std")
    )


def test_non_integer_arguments_are_refused_not_truncated():
    with pytest.raises(TypeError):
        tt.ShareAcrossGroups(1.9)
    with pytest.raises(TypeError):
        tt.Toeplitz(dims=(0, 1.7))
    with pytest.raises(TypeError):
        tt.TileShare(2.5)
    lin = nn.Linear(2, 2).to(torch.complex64)
    with pytest.raises(TypeError, match="floating point only"):
        tt.register_tie(lin, "weight", tt.Symmetric())


def test_a_long_1d_locally_connected_layer_works_in_bounded_blocks(monkeypatch):
    layer = tt.LocallyConnected1d(8, 8, 5, input_size=4096, dtype=torch.float64)
    assert layer.implementation_for(256) == "chunked"
    monkeypatch.setattr(_lc, "SCRATCH_BUDGET", 64 << 10)  # many blocks, even for a batch of 2
    assert layer.implementation_for(2) == "chunked"
    x = torch.randn(2, 8, 4096, dtype=torch.float64)
    # the forum answer's formula, on the 1-d layer viewed as 2-d with height 1
    expected = forum_reference(
        x.unsqueeze(2),
        layer.weight.unsqueeze(0).unsqueeze(-2),
        layer.bias.unsqueeze(0),
        (1, 1),
        (0, 0, 0, 0),
        (1, 1),
    ).squeeze(2)
    assert torch.allclose(layer(x), expected)


def test_a_buffer_member_is_a_buffer_again_after_bake():
    lin, holder = nn.Linear(3, 3), nn.Module()
    holder.register_buffer("w", torch.randn(3, 3))
    tt.tie_tensors([(lin, "weight"), (holder, "w")], relation=transpose)
    tt.bake(nn.ModuleList([lin, holder]))
    assert "w" in holder._buffers and isinstance(lin.weight, nn.Parameter)
    assert torch.equal(holder.w, lin.weight.T)


def test_bools_are_not_counts():
    with pytest.raises(TypeError):
        tt.ShareAcrossGroups(True)
    with pytest.raises(TypeError):
        tt.ShareAlong(True)

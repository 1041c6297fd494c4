"""Ties across tensors: one free vector, several weights."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from _distributed_worker import run_ranks
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt
from tietorch._rank import _rows_of

# ----------------------------------------------------------- minimal counts vs dense rank


def links():
    """(follower shape from leader shape, relation, description) for a 2-D leader (m, n)."""
    return st.sampled_from(
        [
            ("identity", lambda m, n: (m, n), None),
            ("transpose", lambda m, n: (n, m), lambda i, j: (j, i)),
            ("flip", lambda m, n: (m, n), lambda i, j: (-1 - i, j)),
            ("first row", lambda m, n: (1, n), lambda i, j: (i, j)),
            ("last column", lambda m, n: (m, 1), lambda i, j: (i, j - 1)),
        ]
    )


@st.composite
def groups(draw):
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    count = draw(st.integers(2, 3))
    shapes, relations, signs = [(m, n)], [], []
    for _ in range(count - 1):
        _, shape_of, relation = draw(links())
        shapes.append(shape_of(m, n))
        relations.append(relation)
        signs.append(draw(st.sampled_from([1, -1])))
    within = [
        draw(st.sampled_from([None, tt.Toeplitz(), tt.ShareAlong(0), tt.Antisymmetric()]))
        if shape[0] == shape[1]
        else draw(st.sampled_from([None, tt.Toeplitz(), tt.ShareAlong(1)]))
        for shape in shapes
    ]
    return shapes, relations, signs, within


def dense_rank_dimension(shapes, relations, signs, within):
    """Solution-space dimension of the group's constraints, written out densely."""
    sizes = [math.prod(s) for s in shapes]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    rows = []
    for k, (tie, shape) in enumerate(zip(within, shapes)):
        if tie is None:
            continue
        for row in _rows_of(tie, shape):
            wide = np.zeros(total)
            wide[offsets[k] : offsets[k + 1]] = row
            rows.append(wide)
    for k in range(1, len(shapes)):
        relation = relations[k - 1] or (lambda *idx: idx)
        for x, multi in enumerate(np.ndindex(*shapes[k])):
            target = tuple(int(t) % s for t, s in zip(relation(*multi), shapes[0]))
            row = np.zeros(total)
            row[offsets[k] + x] += 1
            row[offsets[0] + np.ravel_multi_index(target, shapes[0])] -= signs[k - 1]
            rows.append(row)
    rank = np.linalg.matrix_rank(np.stack(rows)) if rows else 0
    return total - rank, np.stack(rows) if rows else np.zeros((0, total))


@settings(max_examples=60)
@given(groups())
def test_group_free_count_is_the_dimension_of_the_solution_space(case):
    shapes, relations, signs, within = case
    modules = [nn.Module() for _ in shapes]
    for module, shape in zip(modules, shapes):
        module.weight = nn.Parameter(torch.randn(shape, dtype=torch.float64))
    tt.tie_tensors([(m, "weight") for m in modules], relation=relations, sign=signs, ties=within)
    params = [p for m in modules for p in m.parameters()]
    n_free = sum(p.numel() for p in params)
    expected, c = dense_rank_dimension(shapes, relations, signs, within)
    assert n_free == expected
    # every declared constraint holds exactly for a random free vector
    with torch.no_grad():
        params[0].normal_()
    w = torch.cat([m.weight.detach().reshape(-1) for m in modules]).numpy()
    assert np.abs(c @ w).max(initial=0) == 0


# ------------------------------------------------------------------------ autoencoder


def transpose(i, j):  # module level, so a tied model pickles (torch.save(model))
    return j, i


def autoencoder(relation=transpose):
    torch.manual_seed(0)
    enc, dec = nn.Linear(6, 3), nn.Linear(3, 6)
    net = nn.Sequential(enc, nn.Tanh(), dec)
    tt.tie_tensors([(enc, "weight"), (dec, "weight")], relation=relation)
    return net


X = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))


def test_tied_autoencoder_stays_exactly_tied_through_training():
    net = autoencoder()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        (net(X) - X).square().mean().backward()
        opt.step()
    assert torch.equal(net[2].weight, net[0].weight.T)


def test_the_free_vector_has_one_owner():
    net = autoencoder()
    assert sum(p.numel() for p in net.parameters()) == 18 + 3 + 6
    assert set(net.state_dict()) == {"0.bias", "0.parametrizations.weight.original", "2.bias"}
    s = tt.summary(net)
    assert s.free == 18 and s.entries == 36
    assert "owner 0.weight" in str(s)


def test_assigning_a_member_updates_the_shared_vector():
    net = autoencoder()
    w = torch.randn(6, 3)
    net[2].weight = w
    assert torch.allclose(net[0].weight, w.T) and torch.allclose(net[2].weight, w)


def test_group_checkpoints_safetensors_and_torch_save(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    net = autoencoder()
    path = str(tmp_path / "ae.safetensors")
    safetensors.save_file(net.state_dict(), path)
    other = autoencoder()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(safetensors.load_file(path))
    assert torch.equal(other(X), net(X)) and torch.equal(other[2].weight, other[0].weight.T)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        loaded[0].parametrizations.weight.original.add_(1)
    assert torch.equal(loaded[2].weight, loaded[0].weight.T)  # still one vector after loading
    assert not torch.equal(loaded[0].weight, net[0].weight)
    with pytest.raises(TypeError, match="not picklable"):
        torch.save(autoencoder(lambda i, j: (j, i)), io.BytesIO())


def test_dense_checkpoint_is_projected_jointly():
    torch.manual_seed(4)
    dense = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 6))
    net = autoencoder()
    errors = tt.load_dense_state_dict(net, dense.state_dict())
    assert set(errors) == {"0.weight", "2.weight"}
    mean = (dense[0].weight + dense[2].weight.T) / 2
    assert torch.allclose(net[0].weight, mean) and torch.equal(net[2].weight, net[0].weight.T)
    plain = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 6))
    plain.load_state_dict(tt.dense_state_dict(net))
    assert torch.equal(plain(X), net(X))


def test_deepcopy_keeps_the_group_inside_the_copy():
    net = autoencoder()
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone[0].parametrizations.weight.original.add_(1)
    assert torch.equal(clone[2].weight, clone[0].weight.T)
    assert not torch.equal(clone[2].weight, net[2].weight)


def test_bake_unties_into_independent_tensors():
    net = autoencoder()
    y = net(X)
    tt.bake(net)
    assert type(net[0]) is nn.Linear and type(net[2]) is nn.Linear
    assert isinstance(net[2].weight, nn.Parameter) and net[2].weight.requires_grad
    assert torch.equal(net(X), y)
    with torch.no_grad():
        net[0].weight.add_(1)
    assert not torch.equal(net[2].weight, net[0].weight.T)


def test_owner_is_untied_last():
    net = autoencoder()
    with pytest.raises(ValueError, match="remove_tie those first"):
        tt.remove_tie(net[0], "weight")
    tt.remove_tie(net[2], "weight")
    tt.remove_tie(net[0], "weight")
    assert not parametrize.is_parametrized(net[0])


def test_functional_call_and_compile_see_one_vector():
    from torch.func import functional_call

    net = autoencoder()
    key = "0.parametrizations.weight.original"
    params = {k: v.detach() for k, v in net.named_parameters()}
    out = functional_call(net, {**params, key: params[key] * 2}, (X,))
    with torch.no_grad():
        net[0].parametrizations.weight.original.mul_(2)
    assert torch.allclose(out, net(X))
    compiled = torch.compile(net, fullgraph=True)
    assert torch.allclose(compiled(X), net(X), atol=1e-6)


def test_within_and_across_compose():
    enc, dec = nn.Linear(4, 4), nn.Linear(4, 4)
    tt.tie_tensors(
        [(enc, "weight"), (dec, "weight")],
        relation=lambda i, j: (j, i),
        ties=[tt.Symmetric(), None],
    )
    assert sum(p.numel() for p in (*enc.parameters(), *dec.parameters())) == 10 + 8
    assert torch.equal(enc.weight, enc.weight.T) and torch.equal(dec.weight, enc.weight)


def test_sign_and_slices():
    big, part = nn.Module(), nn.Module()
    big.weight = nn.Parameter(torch.randn(4, 5))
    part.weight = nn.Parameter(torch.randn(2, 5))
    tt.tie_tensors([(big, "weight"), (part, "weight")], relation=lambda i, j: (i + 2, j), sign=-1)
    assert torch.equal(part.weight, -big.weight[2:])
    assert sum(p.numel() for p in (*big.parameters(), *part.parameters())) == 20


def test_refusals_leave_every_module_untouched():
    enc, dec = nn.Linear(6, 3), nn.Linear(3, 6)
    before = [copy.deepcopy(m.state_dict()) for m in (enc, dec)]
    with pytest.raises(ValueError, match=r"shape \(6, 3\).*\(3, 6\).*need a relation"):
        tt.tie_tensors([(enc, "weight"), (dec, "weight")])
    with pytest.raises(ValueError, match="outside"):
        tt.tie_tensors([(enc, "weight"), (dec, "weight")], relation=lambda i, j: (j + 1, i))
    with pytest.raises(ValueError, match="equal size"):
        tt.tie_tensors(
            [(enc, "weight"), (dec, "weight")],
            relation=lambda i, j: (j, i),
            ties=[None, tt.Symmetric()],
        )
    dec.double()
    with pytest.raises(ValueError, match="one dtype"):
        tt.tie_tensors([(enc, "weight"), (dec, "weight")], relation=lambda i, j: (j, i))
    dec.float()
    with pytest.raises(ValueError, match="listed twice"):
        tt.tie_tensors([(enc, "weight"), (enc, "weight")])
    for module, state in zip((enc, dec), before):
        assert not parametrize.is_parametrized(module)
        assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


def test_tie_model_by_names():
    lm = nn.ModuleDict(
        dict(embed=nn.Embedding(20, 4), mix=nn.Linear(4, 4), head=nn.Linear(4, 20, bias=False))
    )
    errors = tt.tie_model(lm, {("embed.weight", "head.weight"): None, "mix.weight": tt.Symmetric()})
    assert set(errors) == {"embed.weight", "mix.weight"}
    assert sum(p.numel() for p in lm.parameters()) == 80 + 10 + 4
    tokens = torch.tensor([[1, 2, 3]])
    logits = lm["head"](lm["mix"](lm["embed"](tokens)))
    assert logits.shape == (1, 3, 20)
    with pytest.raises(ValueError, match="more than one group"):
        tt.tie_model(
            nn.ModuleDict(dict(a=nn.Linear(2, 2), b=nn.Linear(2, 2), c=nn.Linear(2, 2))),
            {("a.weight", "b.weight"): None, ("a.weight", "c.weight"): None},
        )
    clean = nn.ModuleDict(dict(a=nn.Linear(2, 2), b=nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="equal size"):
        tt.tie_model(clean, {("a.weight", "a.bias"): lambda i: (i, i), "b.weight": tt.Symmetric()})
    assert not any(parametrize.is_parametrized(m) for m in clean.values())


def test_one_conv_shared_by_branches_matches_the_loop():
    streams = 3
    branches = nn.ModuleList(nn.Conv2d(1, 4, 3) for _ in range(streams))
    tt.tie_tensors([(b, "weight") for b in branches])
    tt.tie_tensors([(b, "bias") for b in branches])
    assert sum(p.numel() for p in branches.parameters()) == 4 * 9 + 4
    x = torch.randn(2, streams, 8, 8)
    out = torch.cat([b(x[:, k : k + 1]) for k, b in enumerate(branches)], 1)
    loop = torch.cat([branches[0](x[:, k : k + 1]) for k in range(streams)], 1)
    assert torch.equal(out, loop)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_training_of_a_group_matches_one_process(mode, tmp_path):
    (reference,) = run_ranks("single-group", tmp_path, world=1)
    for result in run_ranks(f"{mode}-group", tmp_path):
        assert result["holds"]
        for key, value in reference["state"].items():
            assert torch.allclose(result["state"][key], value, atol=1e-6), key


def test_fsdp_units_that_split_a_group_are_refused_clearly(tmp_path):
    for result in run_ranks("fsdp_split-group", tmp_path):
        assert "keep every tensor of a tie group inside one FSDP unit" in result["error"]


def test_assigning_a_member_that_reads_part_of_the_vector():
    big, part = nn.Module(), nn.Module()
    big.weight = nn.Parameter(torch.randn(4, 5))
    part.weight = nn.Parameter(torch.randn(2, 5))
    tt.tie_tensors([(big, "weight"), (part, "weight")], relation=lambda i, j: (i + 2, j))
    top = big.weight[:2].detach().clone()
    part.weight = torch.ones(2, 5)
    assert torch.equal(big.weight[2:], torch.ones(2, 5))  # the classes it reads are set
    assert torch.equal(big.weight[:2], top)  # the others keep their values

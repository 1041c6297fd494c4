"""register_tie & co: exact constraints through training, state dicts, errors, dtypes."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ties import direct_constraint_holds
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt


def snapshot(module):
    return (
        type(module),
        {k: v.clone() for k, v in module.state_dict().items()},
        [p.shape for p in module.parameters()],
    )


def assert_untouched(module, before):
    cls, state, shapes = before
    assert type(module) is cls
    after = module.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [p.shape for p in module.parameters()] == shapes


@st.composite
def conv_cases(draw):
    nf = draw(st.integers(1, 5))
    k = draw(st.sampled_from([1, 2, 3]))
    tie = draw(
        st.sampled_from(
            [
                tt.SymmetricFlip(),
                tt.SymmetricFlip(sign=-1),
                tt.KernelSymmetry("D4"),
                tt.ShareAlong(1),
                tt.KernelSymmetry("flip_h") & tt.SymmetricFlip(),
            ]
        )
    )
    return nf, k, tie


@settings(max_examples=25)
@given(conv_cases(), st.sampled_from(["sgd", "adam"]))
def test_constraint_holds_exactly_after_optimizer_steps(case, opt_name):
    nf, k, tie = case
    conv = nn.Conv2d(nf, nf, k, padding=k // 2)
    tt.register_tie(conv, "weight", tie)
    layout = tie.layout(conv.weight.shape)
    params = list(conv.parameters())
    assert sum(p.numel() for p in params) == layout.n_free + nf
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9)
        if opt_name == "sgd"
        else torch.optim.Adam(params, lr=0.05)
    )
    x = torch.randn(4, nf, 6, 6)
    for _ in range(3):
        conv(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    w = conv.weight
    # each constraint, written out independently of the tie's relations, holds bitwise
    for part in getattr(tie, "ties", (tie,)):
        assert direct_constraint_holds(part, w), part


def test_free_vector_is_the_only_parameter_and_gets_gradients():
    conv = nn.Conv2d(6, 6, 3, bias=False)
    tt.register_tie(conv, "weight", tt.SymmetricFlip())
    (theta,) = conv.parameters()
    assert theta.shape == (tt.SymmetricFlip().layout((6, 6, 3, 3)).n_free,)
    conv(torch.randn(2, 6, 8, 8)).sum().backward()
    assert theta.grad is not None and bool((theta.grad != 0).all())


def test_gradient_of_a_shared_parameter_is_the_sum_over_its_class():
    lin = nn.Linear(4, 4, bias=False)
    tt.register_tie(lin, "weight", tt.Symmetric())
    x = torch.randn(3, 4)
    lin(x).sum().backward()
    dense = lin.weight.detach().clone().requires_grad_(True)
    (x @ dense.T).sum().backward()
    layout = tt.Symmetric().layout((4, 4))
    expected = torch.zeros(layout.n_free).index_add_(
        0, layout.index.reshape(-1), dense.grad.reshape(-1)
    )
    assert torch.allclose(lin.parametrizations.weight.original.grad, expected)


def test_initial_value_is_the_orthogonal_projection_and_error_is_reported():
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [4.0, 5.0, 0.0], [0.0, 0.0, 1.0]]))
    w = lin.weight.detach().clone()
    error = tt.register_tie(lin, "weight", tt.Symmetric())
    assert torch.allclose(lin.weight, (w + w.T) / 2)
    assert math.isclose(error, float((w - (w + w.T) / 2).norm() / w.norm()), rel_tol=1e-6)
    assert lin.parametrizations.weight[0].projection_error == error


def test_tying_a_tensor_that_satisfies_the_tie_changes_nothing():
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(lin.weight + lin.weight.T)
    w = lin.weight.detach().clone()
    assert tt.register_tie(lin, "weight", tt.Symmetric()) < 1e-7
    assert torch.allclose(lin.weight, w)


def test_preserve_std_keeps_the_init_scale_of_a_fresh_layer():
    torch.manual_seed(0)
    shape = (64, 64, 3, 3)
    projected = nn.Conv2d(64, 64, 3)
    preserved = nn.Conv2d(64, 64, 3)
    std = preserved.weight.std().item()
    tie = tt.ShareAlong(1)  # classes of 64 entries: plain averaging shrinks the spread 8x
    tt.register_tie(projected, "weight", tie)
    tt.register_tie(preserved, "weight", tie, init="preserve_std")
    assert projected.weight.std().item() < std / 4
    assert abs(preserved.weight.std().item() / std - 1) < 0.1
    assert preserved.weight.shape == shape


def test_assignment_projects():
    lin = nn.Linear(3, 3, bias=False)
    tt.register_tie(lin, "weight", tt.Antisymmetric())
    w = torch.randn(3, 3)
    lin.weight = w
    assert torch.allclose(lin.weight, (w - w.T) / 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        lin.weight = torch.randn(2, 2)


def test_state_dict_round_trip_and_weights_only_load():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    tt.tie_modules(net, tt.SymmetricFlip())
    state = net.state_dict()
    assert not any("index" in k or "sign" in k for k in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    other = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    tt.tie_modules(other, tt.SymmetricFlip())
    other.load_state_dict(loaded)
    x = torch.randn(1, 4, 9, 9)
    assert torch.equal(net(x), other(x))


def test_loading_a_free_vector_of_the_wrong_size_names_the_tie_and_sizes():
    small, big = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)
    tt.register_tie(small, "weight", tt.KernelSymmetry("D4"))
    tt.register_tie(big, "weight", tt.SymmetricFlip())
    with pytest.raises(ValueError, match=r"SymmetricFlip.*has 19 entries.*holds 12"):
        big.load_state_dict(small.state_dict())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    conv = nn.Conv2d(3, 3, 3, padding=1)
    tt.register_tie(conv, "weight", tt.SymmetricFlip(sign=-1))
    conv.to(dtype)
    p = conv.parametrizations.weight
    assert p.original.dtype == dtype and p[0].sign.dtype == dtype
    assert p[0].index.dtype == torch.long  # integer maps are left alone by .to(dtype)
    w = conv.weight
    assert w.dtype == dtype and torch.equal(w, -w.transpose(0, 1).flip(2, 3))
    conv.weight = torch.randn(3, 3, 3, 3)  # float32 value into a low-precision module
    assert conv.weight.dtype == dtype
    if dtype == torch.float64:
        conv(torch.randn(1, 3, 5, 5, dtype=dtype)).sum().backward()
        assert p.original.grad.dtype == dtype


def test_index_maps_are_constants_not_buffers_and_follow_to():
    conv = nn.Conv2d(3, 3, 3)
    tt.register_tie(conv, "weight", tt.SymmetricFlip(sign=-1))
    param = conv.parametrizations.weight[0]
    index = param.index.clone()
    assert list(conv.named_buffers()) == []  # nothing for DDP to re-broadcast every step
    assert set(conv.state_dict()) == {"bias", "parametrizations.weight.original"}
    conv.to("meta")
    assert param.index.device.type == "meta" and param.sign.device.type == "meta"
    conv.to_empty(device="cpu")  # meta-device init: the maps come back intact, not garbage
    assert torch.equal(param.index, index)
    with torch.no_grad():  # to_empty leaves the free vector uninitialized (maybe NaN)
        conv.parametrizations.weight.original.normal_()
    w = conv.weight
    assert torch.equal(w, -w.transpose(0, 1).flip(2, 3))


def test_refused_tie_leaves_the_module_untouched():
    conv = nn.Conv2d(3, 4, 3)
    before = snapshot(conv)
    with pytest.raises(ValueError, match=r"Conv2d\.weight.*SymmetricFlip.*\(4, 3, 3, 3\)"):
        tt.register_tie(conv, "weight", tt.SymmetricFlip())
    assert_untouched(conv, before)
    bad = tt.Tie.from_relation(lambda o, i, a, b: (o, i, a + 1, b), name="off_by_one")
    with pytest.raises(ValueError, match="off_by_one"):
        tt.register_tie(conv, "weight", bad)
    assert_untouched(conv, before)
    with pytest.raises(ValueError, match="no tensor named 'kernel'"):
        tt.register_tie(conv, "kernel", tt.ShareAlong(0))
    with pytest.raises(TypeError, match=r"tietorch\.Tie"):
        tt.register_tie(conv, "weight", "symmetric")
    assert_untouched(conv, before)


def test_a_second_tie_on_the_same_tensor_is_refused():
    lin = nn.Linear(3, 3)
    tt.register_tie(lin, "weight", tt.Symmetric())
    before = snapshot(lin)
    with pytest.raises(ValueError, match="already tied"):
        tt.register_tie(lin, "weight", tt.Toeplitz())
    assert_untouched(lin, before)


def test_a_tie_must_be_the_first_parametrization():
    lin = nn.Linear(3, 3)
    nn.utils.parametrizations.orthogonal(lin, "weight")
    with pytest.raises(ValueError, match="first"):
        tt.register_tie(lin, "weight", tt.Symmetric())


def test_tie_modules_checks_everything_first():
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 4, 3), nn.Linear(2, 2))
    before = snapshot(net)
    with pytest.raises(
        ValueError, match=r"tie_modules\(1\.weight\): SymmetricFlip.* on shape \(4, 3, 3, 3\)"
    ):
        tt.tie_modules(net, tt.SymmetricFlip())
    assert_untouched(net, before)
    tied = tt.tie_modules(net, tt.SymmetricFlip(), where=lambda name, m: m.out_channels == 3)
    assert list(tied) == ["0"]
    tied = tt.tie_modules(net, tt.Symmetric(), types=nn.Linear)
    assert list(tied) == ["2"] and parametrize.is_parametrized(net[2], "weight")


def test_remove_tie_and_bake():
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3))
    tt.tie_modules(net, tt.SymmetricFlip())
    x = torch.randn(1, 3, 8, 8)
    y = net(x)
    before = [m.weight.detach().clone() for m in net]
    tt.bake(net)
    assert all(type(m) is nn.Conv2d and type(m.weight) is nn.Parameter for m in net)
    assert all(torch.equal(m.weight, w) for m, w in zip(net, before))
    assert torch.equal(net(x), y)
    with pytest.raises(ValueError, match="not tied"):
        tt.remove_tie(net[0], "weight")


def test_summary_counts():
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 8, 3, bias=False))
    tt.register_tie(net[0], "weight", tt.SymmetricFlip())
    tt.register_tie(net[1], "weight", tt.ShareAlong(1))
    s = tt.summary(net)
    assert [r.tensor for r in s.rows] == ["0.weight", "1.weight"]
    assert (s.entries, s.free) == (144 + 288, 74 + 72)
    assert s.model_parameters == 74 + 4 + 72
    text = str(s)
    assert "SymmetricFlip" in text and "ShareAlong(1)" in text and "total" in text


def test_stream_sharing_matches_the_seed_loop():
    streams, bank = 3, 5
    conv = nn.Conv2d(streams, streams * bank, 3, groups=streams)
    tt.register_tie(conv, "weight", tt.ShareAcrossGroups(streams))
    tt.register_tie(conv, "bias", tt.ShareAcrossGroups(streams))
    single = nn.Conv2d(1, bank, 3)
    with torch.no_grad():
        single.weight.copy_(conv.weight[:bank])
        single.bias.copy_(conv.bias[:bank])
    x = torch.randn(2, streams, 10, 10)
    loop = torch.cat([single(x[:, i : i + 1]) for i in range(streams)], dim=1)
    assert torch.allclose(conv(x), loop, atol=1e-6)
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in single.parameters())

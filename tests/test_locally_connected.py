"""Locally connected layers: values against an independent reference, gradients, locality,
parameter counts, ties over locations, and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch
from tietorch import LocallyConnected1d, LocallyConnected2d, TileShare, unshare
from tietorch.layers import _lc_function as lcf
from tietorch.testing import check_tie

IMPLS = ("batched", "chunked", "unfold")
DT = torch.float64


# ------------------------------------------------------------------------------- reference


def forum_reference(x, weight, bias, stride, pads, dilation):
    """The forum answer's formula (unfold, broadcast multiply, sum;
    https://discuss.pytorch.org/t/locally-connected-layers/26979), generalized to padding and
    dilation, on the weight rearranged to its layout ``(1, O, C, Ho, Wo, kh*kw)``.

    ``pads`` is ``(top, bottom, left, right)``; x is (B, C, H, W), weight (Ho, Wo, O, C, kh, kw).
    """
    ho, wo, o, c, kh, kw = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    u = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    u = u[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    u = u.contiguous().view(*u.shape[:-2], -1)
    w_forum = weight.permute(2, 3, 0, 1, 4, 5).reshape(1, o, c, ho, wo, kh * kw)
    out = (u.unsqueeze(1) * w_forum).sum([2, -1])
    if bias is not None:
        out = out + bias.permute(2, 0, 1).unsqueeze(0)
    return out


def layer_pads(layer):
    """(top, bottom, left, right) from the layer's public padding argument."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        out = []
        for k, d in zip(layer.kernel_size, layer.dilation):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = layer.padding
    return (ph, ph, pw, pw)


@pytest.fixture
def tiny_budget(monkeypatch):
    """Make "chunked" run one output row per chunk even on tiny shapes."""
    monkeypatch.setattr(lcf, "SCRATCH_BUDGET", 1)


# -------------------------------------------------------------------- values vs reference


@st.composite
def configs(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if sh == sw == 1 and draw(st.booleans()):
        padding = draw(st.sampled_from(["same", "valid"]))
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 4), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 4), 9))
    pad = padding if isinstance(padding, tuple) else (0, 0)
    if padding != "same" and (
        h + 2 * pad[0] < dh * (kh - 1) + 1 or w + 2 * pad[1] < dw * (kw - 1) + 1
    ):
        h, w = h + dh * (kh - 1) + 1, w + dw * (kw - 1) + 1  # make sure a location exists
    return dict(
        in_channels=draw(st.integers(1, 3)),
        out_channels=draw(st.integers(1, 3)),
        kernel_size=(kh, kw),
        input_size=(h, w),
        stride=(sh, sw),
        padding=padding,
        dilation=(dh, dw),
        bias=draw(st.booleans()),
    ), draw(st.integers(1, 3))


@settings(max_examples=100)
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_matches_forum_reference(cfg, seed):
    kwargs, batch = cfg
    torch.manual_seed(seed)
    x = torch.randn(batch, kwargs["in_channels"], *kwargs["input_size"], dtype=DT)
    layer = LocallyConnected2d(**kwargs, dtype=DT)
    with torch.no_grad():  # make the locations really differ (init is already random)
        layer.weight.normal_()
    expected = forum_reference(
        x, layer.weight, layer.bias, layer.stride, layer_pads(layer), layer.dilation
    )
    for impl in IMPLS:
        layer.implementation = impl
        for budget in (8 << 20, 1) if impl == "chunked" else (8 << 20,):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(lcf, "SCRATCH_BUDGET", budget)
                y = layer(x)
            assert y.shape == expected.shape
            torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 2, 3, None])
def test_uneven_row_chunks(rows):
    """Chunks of 1, 2, 3 rows over 5 output rows (last chunk shorter), values and grads."""
    torch.manual_seed(0)
    layer = LocallyConnected2d(
        2, 3, (2, 3), (5, 8), stride=(1, 2), padding=(1, 0), dilation=(2, 1), dtype=DT
    )
    assert layer.output_size == (5, 3)
    x = torch.randn(3, 2, 5, 8, dtype=DT, requires_grad=True)
    y = lcf.locally_connected_gemm(x, layer.weight, layer.bias, layer._geometry, rows)
    ref = forum_reference(x, layer.weight, layer.bias, layer.stride, (1, 1, 0, 0), layer.dilation)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_1d_matches_reference_and_conv1d(impl, tiny_budget):
    torch.manual_seed(1)
    layer = LocallyConnected1d(
        3, 4, 3, 11, stride=2, padding=2, dilation=2, dtype=DT, implementation=impl
    )
    assert layer.weight.shape == (6, 4, 3, 3) and layer.bias.shape == (6, 4)
    x = torch.randn(2, 3, 11, dtype=DT)
    ref = forum_reference(
        x.unsqueeze(2),
        layer.weight.unsqueeze(0).unsqueeze(-2),
        layer.bias.unsqueeze(0),
        (1, 2),
        (0, 0, 2, 2),
        (1, 2),
    ).squeeze(2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    # and every location equal -> Conv1d
    conv = nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2, dtype=DT)
    lc = unshare(conv, 11, implementation=impl)
    torch.testing.assert_close(lc(x), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_unbatched_input(impl):
    torch.manual_seed(2)
    layer = LocallyConnected2d(2, 3, 3, (6, 5), padding=1, dtype=DT, implementation=impl)
    x = torch.randn(2, 6, 5, dtype=DT)
    y = layer(x)
    assert y.shape == (3, 6, 5)
    torch.testing.assert_close(y, layer(x.unsqueeze(0))[0], rtol=0, atol=0)
    layer1 = LocallyConnected1d(2, 3, 3, 7, dtype=DT, implementation=impl)
    assert layer1(torch.randn(2, 7, dtype=DT)).shape == (3, 5)


@pytest.mark.parametrize("impl", ["batched", "chunked"])
def test_channels_last_input(impl, tiny_budget):
    torch.manual_seed(3)
    layer = LocallyConnected2d(3, 4, 3, (8, 8), padding=1, dtype=DT, implementation=impl)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x.requires_grad_()
    y, yc = layer(x), layer(xc)
    assert y.is_contiguous() and yc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yc, y, rtol=0, atol=0)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gxc,) = torch.autograd.grad(yc, xc, g)
    torch.testing.assert_close(gxc, gx, rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64():
    torch.manual_seed(4)
    layer = LocallyConnected2d(4, 5, 3, (10, 9), stride=2, padding=1, dtype=DT)
    x = torch.randn(3, 4, 10, 9, dtype=DT)
    y64 = layer(x)
    y32 = layer.float()(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- unshare / equivalences


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), bias=False),
        dict(kernel_size=4, padding="same"),  # even kernel: asymmetric padding
        dict(kernel_size=3, padding="same", dilation=2),
        dict(kernel_size=2, padding="valid", dilation=(1, 3), stride=3),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_unshare_equals_conv(kwargs, impl):
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, dtype=DT, **kwargs)
    layer = unshare(conv, (9, 10), implementation=impl)
    x = torch.randn(2, 3, 9, 10, dtype=DT)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    assert (layer.bias is None) == (conv.bias is None)
    assert layer.weight.shape[:2] == conv(x).shape[2:]


def test_unshare_refuses_padding_modes():
    with pytest.raises(ValueError, match="padding_mode"):
        unshare(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), 8)
    with pytest.raises(TypeError, match=r"nn\.Conv2d, nn\.Conv3d, nn\.ConvTranspose1d"):
        unshare(nn.Linear(3, 3), 8)


def test_all_shared_tie_equals_conv2d():
    torch.manual_seed(6)
    layer = LocallyConnected2d(
        3, 5, 3, (9, 8), stride=(2, 1), padding=1, dtype=DT, tie=TileShare(1)
    )
    w, b = layer.weight, layer.bias
    assert sum(p.numel() for p in layer.parameters()) == 5 * 3 * 3 * 3 + 5
    x = torch.randn(2, 3, 9, 8, dtype=DT)
    ref = F.conv2d(x, w[0, 0], b[0, 0], stride=(2, 1), padding=1)
    for impl in IMPLS:
        layer.implementation = impl
        torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_2d(impl, bias, tiny_budget):
    torch.manual_seed(7)
    layer = LocallyConnected2d(
        2,
        2,
        (2, 3),
        (5, 6),
        stride=(1, 2),
        padding=(1, 1),
        dilation=(2, 1),
        bias=bias,
        dtype=DT,
        implementation=impl,
    )
    x = torch.randn(2, 2, 5, 6, dtype=DT, requires_grad=True)
    params = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    names = list(params)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_1d(impl, tiny_budget):
    torch.manual_seed(8)
    layer = LocallyConnected1d(2, 3, 3, 8, stride=2, padding=1, dtype=DT, implementation=impl)
    x = torch.randn(2, 2, 8, dtype=DT, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def fn(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_gradients_only_where_needed():
    """Frozen weight / input without grad: the others' gradients are still right."""
    torch.manual_seed(9)
    layer = LocallyConnected2d(2, 3, 3, (6, 6), padding=1, dtype=DT)
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    ref = forum_reference(x, layer.weight, layer.bias, (1, 1), (1, 1, 1, 1), (1, 1))
    gw_ref, gb_ref = torch.autograd.grad(ref.square().sum(), (layer.weight, layer.bias))
    gw, gb = torch.autograd.grad(layer(x).square().sum(), (layer.weight, layer.bias))
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(gb, gb_ref)
    layer.weight.requires_grad_(False)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(layer(x).sum(), (x,))
    x2 = x.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(
        forum_reference(x2, layer.weight, layer.bias, (1, 1), (1, 1, 1, 1), (1, 1)).sum(), (x2,)
    )
    torch.testing.assert_close(gx, gx_ref)


def test_second_order():
    """unfold is differentiable twice; the GEMM kernels refuse create_graph clearly."""
    torch.manual_seed(10)
    layer = LocallyConnected2d(2, 2, 2, (4, 4), dtype=DT, implementation="unfold")
    x = torch.randn(1, 2, 4, 4, dtype=DT, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()

    def fn(x, w):
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    assert torch.autograd.gradgradcheck(fn, (x, w))
    layer.implementation = "batched"
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_vmap_uses_unfold_under_auto():
    torch.manual_seed(11)
    layer = LocallyConnected2d(2, 3, 3, (5, 5), dtype=DT)
    xs = torch.randn(4, 2, 5, 5, dtype=DT)
    assert layer.implementation_for(4) == "batched"
    ys = torch.func.vmap(layer)(xs)
    torch.testing.assert_close(ys, layer(xs))


# -------------------------------------------------------------------------------- probing


@pytest.mark.parametrize("impl", IMPLS)
def test_locality_input_and_parameters(impl, tiny_budget):
    """One output location depends only on its window of the input, and only on its own
    kernel and bias: the gradient of that output is zero everywhere else."""
    torch.manual_seed(12)
    pads = (1, 1, 2, 2)
    layer = LocallyConnected2d(
        2,
        3,
        (2, 3),
        (8, 9),
        stride=(2, 1),
        padding=(1, 2),
        dilation=(2, 2),
        dtype=DT,
        implementation=impl,
    )
    ho, wo = layer.output_size
    kh, kw = layer.kernel_size
    for i, j in [(0, 0), (ho - 1, wo - 1), (ho // 2, wo // 2), (1, wo - 2)]:
        x = torch.randn(2, 2, 8, 9, dtype=DT, requires_grad=True)
        y = layer(x)
        gx, gw, gb = torch.autograd.grad(y[:, :, i, j].sum(), (x, layer.weight, layer.bias))
        field = torch.zeros(8, 9, dtype=torch.bool)
        for a in range(kh):
            for d in range(kw):
                r, c = i * 2 + a * 2 - pads[0], j * 1 + d * 2 - pads[2]
                if 0 <= r < 8 and 0 <= c < 9:
                    field[r, c] = True
        assert field.any()
        assert torch.all(gx[:, :, ~field] == 0)
        assert torch.all(gx[:, :, field].abs().sum(0) > 0)  # every tap is really used
        others = torch.ones(ho, wo, dtype=torch.bool)
        others[i, j] = False
        assert torch.all(gw[others] == 0) and torch.all(gb[others] == 0)
        assert gw[i, j].abs().sum() > 0 and torch.all(gb[i, j] == x.shape[0])


# ------------------------------------------------------------------ parameters and ties


def test_parameter_counts():
    forum = LocallyConnected2d(3, 2, 3, input_size=24, bias=False)  # the forum's example
    assert forum.weight.numel() == 3 * 3 * 3 * 2 * (22 * 22) == 26136
    keras = LocallyConnected2d(3, 64, (3, 3), input_size=(32, 32))  # Keras docs' example
    assert keras.output_size == (30, 30)
    n = sum(p.numel() for p in keras.parameters())
    assert n == (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64
    assert keras.weight.shape == (30, 30, 64, 3, 3, 3) and keras.bias.shape == (30, 30, 64)


def test_init_like_conv2d_per_location():
    torch.manual_seed(13)
    layer = LocallyConnected2d(4, 8, 3, 12)
    bound = 1 / math.sqrt(4 * 9)
    for t in (layer.weight, layer.bias):
        assert t.abs().max() <= bound
        assert abs(float(t.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound
    # tied: the free vector follows the same law, so every entry does
    tied = LocallyConnected2d(4, 8, 3, 12, tie=TileShare(2))
    assert tied.weight.abs().max() <= bound
    assert abs(float(tied.weight.detach().std()) - bound / math.sqrt(3)) < 0.1 * bound


@pytest.mark.parametrize("tile", [1, 2, 3, (2, 4), 50])
def test_tile_share_counts_and_structure(tile):
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    layer = LocallyConnected2d(3, 4, 3, (9, 12), tie=TileShare(tile))
    ho, wo = layer.output_size
    n_w = 4 * min(th, ho) * min(tw, wo) * 3 * 3 * 3
    n_b = 4 * min(th, ho) * min(tw, wo)
    assert [p.numel() for p in layer.parameters()] == [n_w, n_b]
    w, b = layer.weight, layer.bias
    for i in range(ho):
        for j in range(wo):
            assert torch.equal(w[i, j], w[i % th, j % tw])
            assert torch.equal(b[i, j], b[i % th, j % tw])
    if th >= 2:  # neighbouring rows sit in different tiles: different kernels
        assert not torch.equal(w[0, 0], w[1, 0])


def test_tile_share_passes_check_tie():
    check_tie(TileShare(2), shapes=[(5, 4, 2, 3, 3, 3), (3, 3, 2, 2)], max_examples=10)
    check_tie(TileShare((3, 2)), shapes=[(7, 3, 2)], max_examples=5)
    check_tie(TileShare(4, dims=0), shapes=[(6, 2, 3)], max_examples=5)


def test_tile_share_repr_and_errors():
    assert repr(TileShare(2)) == "TileShare(2)"
    assert repr(TileShare((2, 3))) == "TileShare((2, 3))"
    assert repr(TileShare(2, dims=0)) == "TileShare(2, dims=0)"
    with pytest.raises(ValueError, match="tile"):
        TileShare(0)
    with pytest.raises(ValueError, match="one period per dim"):
        TileShare((2, 2, 2))
    with pytest.raises(ValueError, match="TileShare"):
        TileShare(2, dims=(0, 3)).layout((4, 4))
    with pytest.raises(ValueError, match="location dims"):
        LocallyConnected1d(2, 2, 3, 10, tie=TileShare(2))  # dims (0, 1): 1 is out_channels
    layer = LocallyConnected1d(2, 2, 3, 10, tie=TileShare(2, dims=0))
    assert torch.equal(layer.weight[0], layer.weight[6])
    assert torch.equal(layer.bias[1], layer.bias[7])


def test_tile_share_composes_with_kernel_symmetry():
    torch.manual_seed(14)
    tie = TileShare(2) & tietorch.KernelSymmetry("D4")
    layer = LocallyConnected2d(2, 3, 3, (8, 8), padding=1, tie=tie, dtype=DT)
    w = layer.weight
    assert torch.equal(w, w.transpose(-1, -2)) and torch.equal(w, w.flip(-1))
    assert torch.equal(w[0, 0], w[2, 4])
    # D4 on 3x3: 3 free values per kernel; 2x2 tiles; 3 x 2 channel pairs
    assert layer.parametrizations.weight.original.numel() == 2 * 2 * 3 * 2 * 3
    assert layer.parametrizations.bias.original.numel() == 2 * 2 * 3
    x = torch.randn(2, 2, 8, 8, dtype=DT)
    ref = forum_reference(x, w, layer.bias, (1, 1), (1, 1, 1, 1), (1, 1))
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    # trains: gradients reach the free vectors
    layer(x).square().sum().backward()
    assert layer.parametrizations.weight.original.grad.abs().sum() > 0


def test_user_location_tie_and_kernel_only_tie():
    """A user key tie over the location dims (mirror-symmetric locations) works; the bias
    stays free unless tied by hand; a kernel-only tie leaves the bias alone too."""
    torch.manual_seed(15)
    mirror = tietorch.Tie.from_key(lambda i, j, *rest: (i, torch.minimum(j, 5 - j), *rest))
    layer = LocallyConnected2d(2, 2, 3, (8, 8), tie=mirror, dtype=DT)
    w = layer.weight
    assert torch.equal(w, w.flip(1))
    assert layer.parametrizations.weight.original.numel() == 6 * 3 * 2 * 2 * 9
    assert "bias" not in layer.parametrizations
    tietorch.register_tie(layer, "bias", mirror)
    assert torch.equal(layer.bias, layer.bias.flip(1))
    x = torch.randn(2, 2, 8, 8, dtype=DT)
    ref = forum_reference(x, w, layer.bias, (1, 1), (0, 0, 0, 0), (1, 1))
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    sym = LocallyConnected2d(2, 2, 3, (8, 8), tie=tietorch.KernelSymmetry("C4"))
    assert "bias" not in sym.parametrizations
    assert sym.bias.numel() == 6 * 6 * 2


# ---------------------------------------------------------------------------------- errors


def test_errors():
    layer = LocallyConnected2d(3, 4, 3, (10, 12))
    with pytest.raises(ValueError, match=r"expected spatial size \(10, 12\).*got \(12, 10\)"):
        layer(torch.randn(1, 3, 12, 10))
    with pytest.raises(ValueError, match="expected 3 input channels, got 2"):
        layer(torch.randn(1, 2, 10, 12))
    with pytest.raises(ValueError, match="4-d"):
        layer(torch.randn(10, 12))
    with pytest.raises(ValueError, match="no output location"):
        LocallyConnected2d(3, 4, 5, (4, 10))
    with pytest.raises(ValueError, match="no output location"):
        LocallyConnected1d(3, 4, 3, 9, dilation=5)
    with pytest.raises(ValueError, match="same"):
        LocallyConnected2d(3, 4, 3, 8, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        LocallyConnected2d(3, 4, 3, 8, padding="full")
    with pytest.raises(ValueError, match="padding"):
        LocallyConnected2d(3, 4, 3, 8, padding=-1)
    with pytest.raises(ValueError, match="implementation"):
        LocallyConnected2d(3, 4, 3, 8, implementation="dense")
    with pytest.raises(ValueError, match="in_channels"):
        LocallyConnected2d(0, 4, 3, 8)
    with pytest.raises(ValueError, match="kernel_size"):
        LocallyConnected2d(3, 4, (3, 3, 3), 8)
    with pytest.raises(ValueError, match="stride"):
        LocallyConnected2d(3, 4, 3, 8, stride=0)
    with pytest.raises(ValueError, match="expected spatial size"):
        LocallyConnected1d(3, 4, 3, 9)(torch.randn(2, 3, 10))


def test_repr_and_auto_choice():
    layer = LocallyConnected2d(3, 64, 3, 32, padding="same", dilation=1, bias=False)
    assert repr(layer) == (
        "LocallyConnected2d(3, 64, kernel_size=(3, 3), input_size=(32, 32), stride=(1, 1), "
        "padding='same', bias=False)"
    )
    assert "dilation=(2,)" in repr(
        LocallyConnected1d(2, 2, 3, 20, dilation=2, implementation="unfold")
    )
    assert layer.implementation_for(1) == "batched"
    assert layer.implementation_for(512) == "chunked"
    assert LocallyConnected2d(3, 4, 3, 8, implementation="unfold").implementation_for(1) == "unfold"


# ------------------------------------------------------------------- scratch-buffer reuse


@pytest.mark.parametrize("shape", [(3, 4, 3, (6, 7)), (3, 1, 3, (6, 7)), (2, 5, 3, (3, 3))])
def test_outputs_never_alias_reused_scratch(shape):
    """The GEMM kernels reuse per-thread scratch buffers across calls; outputs and gradients
    must stay intact after later calls (also where the result view is already contiguous:
    one output channel, or a single location)."""
    cin, cout, k, size = shape
    torch.manual_seed(16)
    layer = LocallyConnected2d(cin, cout, k, size, dtype=DT, implementation="batched")
    x1, x2 = torch.randn(2, cin, *size, dtype=DT), torch.randn(2, cin, *size, dtype=DT)
    y1 = layer(x1)
    g1 = torch.autograd.grad(y1.square().sum(), layer.weight)[0]
    kept, kept_g = y1.clone(), g1.clone()
    layer(x2).square().sum().backward()
    assert torch.equal(y1, kept) and torch.equal(g1, kept_g)
    ref = forum_reference(x1, layer.weight, layer.bias, (1, 1), (0, 0, 0, 0), (1, 1))
    torch.testing.assert_close(y1, ref, rtol=1e-12, atol=1e-12)
    lcf.free_workspace()
    assert lcf.workspace_bytes() == 0
    torch.testing.assert_close(layer(x1), ref, rtol=1e-12, atol=1e-12)


def test_inference_mode_then_training():
    torch.manual_seed(17)
    layer = LocallyConnected2d(2, 3, 3, (6, 6), dtype=DT)
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    with torch.inference_mode():
        y_inf = layer(x)
    y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(y_inf, y.detach(), rtol=0, atol=0)
    assert layer.weight.grad is not None

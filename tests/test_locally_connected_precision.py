"""Locally connected layers: per-side padding against the forum formula on an explicitly
padded input, and dtypes as ``nn.Conv2d`` (autocast, mismatched inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_locally_connected import forum_reference
from torch import nn

from tietorch import LocallyConnected1d, LocallyConnected2d, TileShare, unshare

IMPLS = ("batched", "chunked", "unfold")


@settings(max_examples=25, deadline=None)
@given(
    pads=st.tuples(*(st.integers(0, 3) for _ in range(4))),
    impl=st.sampled_from(IMPLS),
    seed=st.integers(0, 2**16),
)
def test_per_side_padding_matches_reference(pads, impl, seed):
    top, bottom, left, right = pads
    torch.manual_seed(seed)
    layer = LocallyConnected2d(
        2, 3, (3, 2), input_size=(5, 4), padding=((top, bottom), (left, right)),
        implementation=impl, dtype=torch.float64,
    )  # fmt: skip
    assert layer.output_size == (5 + top + bottom - 2, 4 + left + right - 1)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    want = forum_reference(x, layer.weight, layer.bias, (1, 1), pads, (1, 1))
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_per_side_padding_1d_matches_padded_conv(impl):
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 4, 3, dtype=torch.float64)
    lc = LocallyConnected1d(3, 4, 3, input_size=7, padding=(2, 0), implementation=impl)
    lc = lc.double()
    with torch.no_grad():
        lc.weight.copy_(conv.weight.expand_as(lc.weight))
        assert lc.bias is not None
        lc.bias.copy_(conv.bias.expand_as(lc.bias))  # type: ignore[union-attr]
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(lc(x), conv(F.pad(x, (2, 0))))
    assert lc.padding == ((2, 0),)
    assert LocallyConnected1d(3, 4, 3, input_size=7, padding=(1, 1)).padding == (1,)


def test_padding_errors():
    for bad in ((1, 2, 3), ((1, 2, 3), 1), ((-1, 0), 0), "full", 1.5):
        with pytest.raises((ValueError, TypeError), match="padding"):
            LocallyConnected2d(1, 1, 3, input_size=5, padding=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_low_precision_like_conv(impl, low):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    lc = unshare(conv, (6, 6), implementation=impl)
    x = torch.randn(4, 3, 6, 6)
    with torch.autocast("cpu", dtype=low):
        want = conv(x)
        got = lc(x)
        got_low_input = lc(x.to(low))  # a low-precision input, as after another autocast op
    assert want.dtype == got.dtype == got_low_input.dtype == low
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_low_input, got)
    got.float().square().sum().backward()
    assert lc.weight.grad is not None and lc.weight.grad.dtype == torch.float32


def test_autocast_leaves_float64_alone_and_mismatch_is_refused():
    lc = LocallyConnected2d(2, 3, 3, input_size=5, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lc(x).dtype == torch.float64
    with pytest.raises(TypeError, match=r"input dtype torch.float32 .* torch.float64"):
        lc(x.float())


@pytest.mark.parametrize("impl", ["chunked", "unfold"])
def test_mixed_precision_training_keeps_tie_exact(impl):
    torch.manual_seed(0)
    lc = LocallyConnected2d(3, 4, 3, input_size=8, tie=TileShare(2), implementation=impl)
    opt = torch.optim.SGD(lc.parameters(), lr=0.1)
    x, target = torch.randn(8, 3, 8, 8), torch.randn(8, 4, 6, 6)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (lc(x).float() - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    w = lc.weight.detach()
    for i in range(6):
        for j in range(6):
            assert torch.equal(w[i, j], w[i % 2, j % 2])  # the tie stays exact


def grouped_loop_reference(x, weight, bias, groups):
    """Explicit loops over locations and groups (no padding, stride 1)."""
    ho, wo, o, cg, kh, kw = weight.shape
    og = o // groups
    y = torch.empty(x.shape[0], o, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            for gi in range(groups):
                patch = x[:, gi * cg : (gi + 1) * cg, i : i + kh, j : j + kw].flatten(1)
                w = weight[i, j, gi * og : (gi + 1) * og].flatten(1)
                y[:, gi * og : (gi + 1) * og, i, j] = (
                    patch @ w.t() + bias[i, j, gi * og : (gi + 1) * og]
                )
    return y


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups,cin,cout", [(2, 4, 6), (3, 3, 3), (4, 4, 8)])
def test_groups_match_loops_unshared_conv_and_gradcheck(impl, groups, cin, cout, monkeypatch):
    from tietorch.layers import _lc_function as lcf

    monkeypatch.setattr(lcf, "SCRATCH_BUDGET", 1)  # chunked: one row per chunk
    torch.manual_seed(0)
    lc = LocallyConnected2d(
        cin, cout, (3, 2), input_size=(6, 5), groups=groups, implementation=impl,
        dtype=torch.float64,
    )  # fmt: skip
    assert lc.weight.shape == (4, 4, cout, cin // groups, 3, 2)
    x = torch.randn(2, cin, 6, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(lc(x), grouped_loop_reference(x, lc.weight, lc.bias, groups))
    assert torch.autograd.gradcheck(lambda x, w, b: lc._gemm_kernel(x, w, b, lc._geometry, 1)
                                    if impl != "unfold" else
                                    lc._unfold_kernel(x, w, b, lc._geometry),
                                    (x, lc.weight, lc.bias))  # fmt: skip
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, dtype=torch.float64)
    unshared = unshare(conv, (6, 5), implementation=impl)
    assert "groups=" in repr(unshared)
    torch.testing.assert_close(unshared(x), conv(x))
    with pytest.raises(ValueError, match="divisible by groups"):
        LocallyConnected2d(cin, cout + 1, 3, input_size=6, groups=groups)

"""Transposed locally connected layers: the adjoint identity against the forward layer,
equality with nn.ConvTranspose when every location shares one kernel, explicit loops over
locations, gradients (gradcheck in float64), autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tietorch import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    TileShare,
    unshare,
)
from tietorch.layers import _lc_function as lcf

IMPLS = ("batched", "chunked", "unfold")
DT = torch.float64


@pytest.fixture
def tiny_budget(monkeypatch):
    monkeypatch.setattr(lcf, "SCRATCH_BUDGET", 1)


def loop_reference(y, weight, bias, stride, pads, dilation, out_size):
    """z by explicit loops over input locations: each scatters its kernel-weighted values."""
    hi, wi, _, co, kh, kw = weight.shape
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = stride, dilation, pads
    ho, wo = out_size
    z = torch.zeros(y.shape[0], co, ho + pt + pb, wo + pl + pr, dtype=y.dtype)
    for i in range(hi):
        for j in range(wi):
            for a in range(kh):
                for d in range(kw):
                    r, c = i * sh + a * dh, j * sw + d * dw
                    z[:, :, r, c] += y[:, :, i, j] @ weight[i, j, :, :, a, d]
    z = z[:, :, pt : pt + ho, pl : pl + wo]
    if bias is not None:
        z = z + bias.permute(2, 0, 1)
    return z


@st.composite
def configs(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 1)) for _ in range(4))
    op = tuple(draw(st.integers(0, si - 1)) for si in s)
    size = (draw(st.integers(2, 5)), draw(st.integers(2, 5)))
    return k, s, d, pads, op, size


def _make(cfg, impl, bias=True):
    k, s, d, (pt, pb, pl, pr), op, size = cfg
    return LocallyConnectedTranspose2d(
        3, 2, k, input_size=size, stride=s, padding=((pt, pb), (pl, pr)), output_padding=op,
        dilation=d, bias=bias, implementation=impl, dtype=DT,
    )  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(cfg=configs(), impl=st.sampled_from(IMPLS), seed=st.integers(0, 2**16))
def test_adjoint_identity_and_loop_reference(cfg, impl, seed):
    k, s, d, pads, _, size = cfg
    torch.manual_seed(seed)
    try:
        lct = _make(cfg, impl)
    except ValueError:
        return  # no output location
    lc = LocallyConnected2d(
        2, 3, k, input_size=lct.output_size, stride=s, dilation=d, bias=False, dtype=DT,
        padding=((pads[0], pads[1]), (pads[2], pads[3])),
    )  # fmt: skip
    assert lc.output_size == size
    with torch.no_grad():
        lc.weight.copy_(lct.weight)
    x = torch.randn(2, 2, *lct.output_size, dtype=DT)
    y = torch.randn(2, 3, *size, dtype=DT)
    z = lct(y)
    assert lct.bias is not None
    z0 = z - lct.bias.permute(2, 0, 1)
    torch.testing.assert_close((y * lc(x)).sum(), (z0 * x).sum(), rtol=1e-10, atol=1e-10)
    want = loop_reference(y, lct.weight, lct.bias, s, pads, d, lct.output_size)
    torch.testing.assert_close(z, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_tile_share_1_is_conv_transpose2d(impl, tiny_budget):
    torch.manual_seed(0)
    lct = LocallyConnectedTranspose2d(
        4, 3, 3, input_size=(5, 6), stride=2, padding=1, output_padding=1, tie=TileShare(1),
        implementation=impl, dtype=DT,
    )  # fmt: skip
    assert lct.output_size == (10, 12)
    w, b = lct.weight[0, 0], lct.bias[0, 0]  # type: ignore[index]
    y = torch.randn(2, 4, 5, 6, dtype=DT)
    want = F.conv_transpose2d(y, w, b, stride=2, padding=1, output_padding=1)
    torch.testing.assert_close(lct(y), want)


@pytest.mark.parametrize("impl", IMPLS)
def test_unshare_conv_transpose(impl):
    torch.manual_seed(0)
    for conv, size in (
        (nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1, dtype=DT), (4, 5)),
        (nn.ConvTranspose2d(3, 5, 3, stride=(2, 1), output_padding=(1, 0), dtype=DT), (3, 3)),
        (nn.ConvTranspose1d(3, 5, 3, stride=3, padding=2, dilation=2, dtype=DT), (6,)),
    ):
        lct = unshare(conv, size, implementation=impl)
        assert isinstance(lct, (LocallyConnectedTranspose1d, LocallyConnectedTranspose2d))
        y = torch.randn(2, 3, *size, dtype=DT)
        torch.testing.assert_close(lct(y), conv(y))
        assert lct(y[0]).shape == conv(y[0]).shape  # unbatched


@pytest.mark.parametrize("impl", ["batched", "chunked"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_transpose(impl, bias, tiny_budget):
    torch.manual_seed(0)
    lct = LocallyConnectedTranspose2d(
        3, 2, (2, 3), input_size=(3, 4), stride=(2, 1), padding=((1, 0), (0, 1)), bias=bias,
        implementation=impl, dtype=DT,
    )  # fmt: skip
    y = torch.randn(2, 3, 3, 4, dtype=DT, requires_grad=True)
    params = [p for p in (lct.weight, lct.bias) if p is not None]

    def f(y, *ps):
        w = ps[0]
        b = ps[1] if bias else None
        return lcf.locally_connected_transpose_gemm(y, w, b, lct._geometry, 1)

    assert torch.autograd.gradcheck(f, (y, *params))
    yl = y.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.testing.assert_close(lct(yl), lct(y))


def test_1d_adjoint_and_autocast():
    torch.manual_seed(0)
    lct = LocallyConnectedTranspose1d(
        4, 2, 3, input_size=7, stride=2, padding=(1, 0), bias=False, dtype=DT
    )
    assert lct.output_size == (14,) and lct.weight.shape == (7, 4, 2, 3)
    lc = LocallyConnected1d(2, 4, 3, input_size=14, stride=2, padding=(1, 0), bias=False)
    lc = lc.double()
    with torch.no_grad():
        lc.weight.copy_(lct.weight)
    x, y = torch.randn(3, 2, 14, dtype=DT), torch.randn(3, 4, 7, dtype=DT)
    torch.testing.assert_close((y * lc(x)).sum(), (lct(y) * x).sum())
    f32 = LocallyConnectedTranspose2d(4, 2, 3, input_size=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f32(torch.randn(2, 4, 5, 5)).dtype == torch.bfloat16


def test_transpose_errors():
    with pytest.raises(ValueError, match="output_padding"):
        LocallyConnectedTranspose2d(1, 1, 3, input_size=4, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding"):
        LocallyConnectedTranspose2d(1, 1, 3, input_size=4, padding="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input channels"):
        LocallyConnectedTranspose2d(2, 1, 3, input_size=4)(torch.randn(1, 3, 4, 4))

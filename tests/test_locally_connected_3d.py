"""``LocallyConnected3d`` against its defining formula (computed location by location, float64),
every implementation, gradients of input, weight and bias; against ``nn.Conv3d`` when every
location shares one kernel (``unshare``, ``TileShare(1)``); gradcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tietorch as tt
from tietorch import LocallyConnected3d


def reference(x, weight, bias, stride, pads, dilation, groups):
    """The definition: at each output location, its own kernel on its own patch."""
    padded = nn.functional.pad(x, [p for pair in reversed(pads) for p in pair])
    do, ho, wo, oc, cg = weight.shape[:5]
    k = weight.shape[5:]
    out = x.new_zeros(x.shape[0], oc, do, ho, wo)
    og = oc // groups
    for i in range(do):
        for j in range(ho):
            for m in range(wo):
                start = (i * stride[0], j * stride[1], m * stride[2])
                patch = padded[
                    :,
                    :,
                    start[0] : start[0] + dilation[0] * (k[0] - 1) + 1 : dilation[0],
                    start[1] : start[1] + dilation[1] * (k[1] - 1) + 1 : dilation[1],
                    start[2] : start[2] + dilation[2] * (k[2] - 1) + 1 : dilation[2],
                ]
                for gi in range(groups):
                    w = weight[i, j, m, gi * og : (gi + 1) * og]  # (og, cg, *k)
                    p = patch[:, gi * cg : (gi + 1) * cg]
                    out[:, gi * og : (gi + 1) * og, i, j, m] = torch.einsum("bcxyz,ocxyz->bo", p, w)
    if bias is not None:
        out = out + bias.permute(3, 0, 1, 2)
    return out


@settings(max_examples=25, deadline=None)
@given(
    implementation=st.sampled_from(["auto", "batched", "chunked", "unfold"]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.just(1), st.integers(1, 2)),
    pads=st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 1))] * 3),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
    channels_last=st.booleans(),
)
def test_matches_the_definition_with_gradients(
    implementation, kernel, stride, dilation, pads, groups, bias, channels_last
):
    size = (5, 4, 5)
    torch.manual_seed(0)
    layer = LocallyConnected3d(
        2 * groups, 2 * groups, kernel, input_size=size, stride=stride, padding=pads,
        dilation=dilation, groups=groups, bias=bias, implementation=implementation,
        dtype=torch.float64,
    )  # fmt: skip
    x = torch.randn(3, 2 * groups, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_(True)
    y = layer(x)
    expected = reference(x, w, b, stride, pads, dilation, groups)
    assert y.shape == expected.shape
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    seed = torch.randn_like(y)
    got = torch.autograd.grad((y * seed).sum(), [x, layer.weight] + ([layer.bias] if bias else []))
    want = torch.autograd.grad((expected * seed).sum(), [x, w] + ([b] if bias else []))
    for a, e in zip(got, want, strict=True):
        assert torch.allclose(a, e, rtol=1e-11, atol=1e-11)


def test_unshare_of_a_conv3d_and_tile_share_1_equal_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 4, 3, padding=1, stride=(1, 2, 1)).double()
    x = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64)
    lc = tt.unshare(conv, (5, 6, 4))
    assert isinstance(lc, LocallyConnected3d)
    assert torch.allclose(lc(x), conv(x), atol=1e-12)
    tiled = LocallyConnected3d(
        3, 4, 3, input_size=(5, 6, 4), padding=1, stride=(1, 2, 1), dtype=torch.float64,
        tie=tt.TileShare(1, dims=(0, 1, 2)),
    )  # fmt: skip
    assert tiled.parametrizations.weight.original.numel() == conv.weight.numel()
    tiled.weight = conv.weight.detach().expand_as(tiled.weight)
    tiled.bias = conv.bias.detach().expand_as(tiled.bias)
    assert torch.allclose(tiled(x), conv(x), atol=1e-12)


def test_gradcheck_and_unbatched_input():
    torch.manual_seed(0)
    layer = LocallyConnected3d(2, 2, 2, input_size=(3, 3, 3), dtype=torch.float64)
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.equal(layer(x[0]), layer(x)[0])


def test_refusals_name_the_layer():
    with pytest.raises(tt.errors.ShapeError, match="LocallyConnected3d"):
        LocallyConnected3d(2, 2, 3, input_size=(4, 4, 4))(torch.randn(1, 2, 4, 4))
    with pytest.raises(tt.errors.ArgumentError, match="TileShare"):
        LocallyConnected3d(2, 2, 3, input_size=4, tie=tt.TileShare(2, dims=(3,)))


def test_meta_device_then_to_empty_and_zero_padding_weights():
    with torch.device("meta"):
        layer = LocallyConnected3d(2, 3, 3, input_size=(4, 4, 4), padding=1)
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert layer(torch.randn(1, 2, 4, 4, 4)).shape == (1, 3, 4, 4, 4)
    zeroed = LocallyConnected3d(2, 3, 3, input_size=(4, 4, 4), padding=1, zero_padding_weights=True)
    corner = zeroed.weight[0, 0, 0, :, :, 0, 0, 0]  # the first location's first offset: padding
    assert torch.equal(corner, torch.zeros_like(corner))
    inside = zeroed.weight[0, 0, 0, :, :, 1, 1, 1]
    assert bool((inside != 0).all())

"""Tiled locally connected layers run as strided convolutions (``layers/_tiled.py``): values and
gradients against the defining formula in float64 (1-d, 2-d, 3-d; strides, paddings,
dilations, groups, tiles that do not divide the output), when ``"auto"`` takes that path and when
it does not, and the layouts, dtypes and transforms it must keep."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tietorch
from tietorch import LocallyConnected1d, LocallyConnected2d, LocallyConnected3d, TileShare

DT = torch.float64


def definition(x, weight, bias, stride, pads, dilation, groups):
    """The defining formula, location by location: at output location ``i`` the layer is the
    conv of ``x`` with the kernel ``weight[i]`` read at that one location (``F.conv*d`` on the
    window, so no code is shared with the layer's kernels). ``pads``: (before, after) per dim."""
    n = x.dim() - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    x = F.pad(x, [p for d in reversed(range(n)) for p in pads[d]])
    out_size = weight.shape[:n]
    y = x.new_empty(x.shape[0], weight.shape[n], *out_size)
    for loc in itertools.product(*(range(s) for s in out_size)):
        window = tuple(
            slice(i * s, i * s + dil * (k - 1) + 1)
            for i, s, dil, k in zip(loc, stride, dilation, weight.shape[-n:])
        )
        part = conv(x[(slice(None), slice(None), *window)], weight[loc], dilation=dilation,
                    groups=groups)  # fmt: skip
        y[(slice(None), slice(None), *loc)] = part.reshape(x.shape[0], -1)
    if bias is not None:
        y = y + bias.permute(n, *range(n))
    return y


def free_grads(layer):
    return [p.grad.clone() for p in layer.parameters()]


@st.composite
def tiled_configs(draw):
    n = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
    size = tuple(dil * (k - 1) + 1 + draw(st.integers(1, 7)) for k, dil in zip(kernel, dilation))
    groups = draw(st.sampled_from([1, 2]))
    tile = tuple(draw(st.integers(1, 4)) for _ in range(n))
    return (
        dict(
            in_channels=groups * draw(st.integers(1, 2)),
            out_channels=groups * draw(st.integers(1, 2)),
            kernel_size=kernel,
            input_size=size,
            stride=stride,
            padding=pads if n == 2 else pads[0],
            dilation=dilation,
            groups=groups,
            bias=draw(st.booleans()),
        ),
        tile,
        pads,
        draw(st.integers(1, 3)),
    )


@settings(max_examples=60, deadline=None)
@given(cfg=tiled_configs(), seed=st.integers(0, 2**16))
def test_tiled_layers_equal_the_definition(cfg, seed):
    kwargs, tile, pads, batch = cfg
    n = len(kwargs["kernel_size"])
    cls = LocallyConnected1d if n == 1 else LocallyConnected2d
    tie = TileShare(tile, dims=0) if n == 1 else TileShare(tile)
    torch.manual_seed(seed)
    layer = cls(**kwargs, tie=tie, dtype=DT)
    periods = tuple(min(t, o) for t, o in zip(tile, layer.output_size))
    tiled = periods != layer.output_size
    assert layer.implementation_for(batch) == ("conv" if tiled else "batched")
    x = torch.randn(batch, kwargs["in_channels"], *kwargs["input_size"], dtype=DT)
    x.requires_grad_(True)
    y = layer(x)
    expected = definition(
        x, layer.weight, layer.bias, layer.stride, pads, layer.dilation, layer.groups
    )
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    refs = torch.autograd.grad(expected, [x, *layer.parameters()], g)
    for a, b in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_3d_tiled_layer_equals_the_definition():
    torch.manual_seed(3)
    layer = LocallyConnected3d(
        2, 3, (2, 3, 2), (5, 6, 7), stride=(1, 2, 1), padding=1, dilation=(2, 1, 1),
        tie=TileShare((2, 1, 3), dims=(0, 1, 2)), dtype=DT,
    )  # fmt: skip
    assert layer.implementation_for(2) == "conv"
    x = torch.randn(2, 2, 5, 6, 7, dtype=DT, requires_grad=True)
    y = layer(x)
    expected = definition(x, layer.weight, layer.bias, layer.stride, ((1, 1),) * 3,
                          layer.dilation, 1)  # fmt: skip
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for a, b in zip(
        torch.autograd.grad(y, [x, *layer.parameters()], g),
        torch.autograd.grad(expected, [x, *layer.parameters()], g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_gradcheck_through_the_tiled_path():
    torch.manual_seed(0)
    layer = LocallyConnected2d(2, 3, 3, (7, 8), stride=(1, 2), padding=1, tie=TileShare(2),
                               dtype=DT)  # fmt: skip
    assert layer.implementation_for(1) == "conv"
    x = torch.randn(2, 2, 7, 8, dtype=DT, requires_grad=True)
    w = layer.parametrizations.weight.original
    b = layer.parametrizations.bias.original
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, w, b))


def test_structure_is_read_from_the_layout_not_the_tie_class():
    """A user's tie with the same periodic structure, a kernel tie combined with tiles, and a
    tiled weight whose bias is left free all run as convolutions, with the same values as the
    GEMM kernels."""

    class EvenRows(tietorch.Tie):
        def key(self, *idx):  # rows repeat with period 2, columns are free
            return (idx[0] % 2, *idx[1:])

    torch.manual_seed(1)
    x = torch.randn(3, 2, 9, 6, dtype=DT)
    layers = [
        LocallyConnected2d(2, 4, 3, (9, 6), tie=EvenRows(), dtype=DT),
        LocallyConnected2d(2, 4, 3, (9, 6), padding=1,
                           tie=TileShare(2) & tietorch.KernelSymmetry("D4"), dtype=DT),
    ]  # fmt: skip
    free_bias = LocallyConnected2d(2, 4, 3, (9, 6), dtype=DT)
    tietorch.register_tie(free_bias, "weight", TileShare(3))  # the bias stays per location
    layers.append(free_bias)
    for layer in layers:  # EvenRows: 2 x 4 tiles (rows repeat, the 4 columns do not)
        assert layer.implementation_for(3) == "conv"
        y = layer(x)
        y.square().sum().backward()
        auto = free_grads(layer)
        layer.implementation = "chunked"
        for p in layer.parameters():
            p.grad = None
        ref = layer(x)
        ref.square().sum().backward()
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(auto, free_grads(layer), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_when_auto_keeps_the_gemm_kernels():
    assert LocallyConnected2d(2, 2, 3, 12, tie=TileShare(5)).implementation_for(4) == "batched"
    assert LocallyConnected2d(2, 2, 3, 12, tie=TileShare(4)).implementation_for(4) == "conv"
    assert LocallyConnected2d(2, 2, 3, 12).implementation_for(4) == "batched"  # untied
    explicit = LocallyConnected2d(2, 2, 3, 12, tie=TileShare(2), implementation="chunked")
    assert explicit.implementation_for(4) == "chunked"
    transposed = tietorch.layers.LocallyConnectedTranspose2d(2, 2, 3, 10, tie=TileShare(2))
    assert transposed.implementation_for(4) == "batched"


def test_retying_replans():
    layer = LocallyConnected2d(2, 2, 3, 10, tie=TileShare(2))
    assert layer.implementation_for(1) == "conv"
    tietorch.remove_tie(layer, "weight")
    assert layer.implementation_for(1) == "batched"
    tietorch.register_tie(layer, "weight", TileShare(4))
    assert layer._tiles()[0].periods == (4, 4)


@pytest.mark.parametrize("n", [1, 2])
def test_channels_last_unbatched_and_autocast(n):
    torch.manual_seed(2)
    if n == 2:
        layer = LocallyConnected2d(3, 4, 3, (10, 9), padding=1, tie=TileShare(2))
        x = torch.randn(2, 3, 10, 9)
        xcl = x.contiguous(memory_format=torch.channels_last)
        y = layer(x)
        ycl = layer(xcl)
        assert ycl.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
        torch.testing.assert_close(ycl, y)
    else:
        layer = LocallyConnected1d(3, 4, 3, 11, tie=TileShare(3, dims=0))
        x = torch.randn(2, 3, 11)
        y = layer(x)
    torch.testing.assert_close(layer(x[0]), y[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), y, rtol=0.05, atol=0.05)


def test_vmap_and_per_sample_gradients_fall_back():
    from torch.func import functional_call, grad, vmap

    layer = LocallyConnected2d(2, 3, 3, 8, tie=TileShare(2), dtype=DT)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(4, 2, 8, 8, dtype=DT)

    def loss(p, xi):
        return functional_call(layer, p, (xi[None],)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    key = "parametrizations.weight.original"
    torch.testing.assert_close(per_sample[key][1], grad(loss)(params, x[1])[key])


def test_compile_matches_eager():
    layer = LocallyConnected2d(2, 3, 3, 9, padding=1, tie=TileShare(2))
    x = torch.randn(2, 2, 9, 9)
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x), layer(x))
    g_eager = torch.autograd.grad(layer(x).sum(), list(layer.parameters()))
    g_comp = torch.autograd.grad(compiled(x).sum(), list(layer.parameters()))
    for a, b in zip(g_eager, g_comp, strict=True):
        torch.testing.assert_close(a, b)

"""Tiled locally connected layers run as strided convolutions (private).

A locally connected weight that repeats over its location dims with periods ``P`` (``W[i] ==
W[i mod P]``: ``TileShare(t)``, alone or combined with a kernel tie, or any tie with that
structure) holds ``prod(P)`` different kernels. The outputs whose location is ``r`` modulo
``P`` all use kernel ``K[r]``: they form one convolution with stride ``stride * P`` that starts
``r * stride`` further into the input. So the layer is ``prod(P)`` ordinary convolutions, each
making ``1 / prod(P)`` of the outputs, interleaved into the output: one convolution's FLOPs,
run by the conv kernels instead of one small GEMM per location.

Two choices, each measured (``benchmarks/bench_locally_connected.py``; 2-core CPU, torch 2.13,
B=32, 32x32, k=3, fwd+bwd):

* A residue's start offset is absorbed into the conv's own zero padding (padding ``q`` with
  ``q = (before - r * stride) mod (stride * P)``, dropping the first few outputs) rather than
  by cropping the input: a crop is a non-contiguous tensor the conv would copy. The input is
  copied only where the last residue needs zeros past the conv's padding.
* ``prod(P)`` strided convs, not one conv with ``prod(P) * out_channels`` output channels read
  along the diagonal: that one computes every kernel at every location, ``prod(P)`` times the
  work, and measured 2.2-2.7x slower at ``P = (2, 2)`` and 4-30x at ``(4, 4)``.

Many small convs lose to the per-location GEMMs once the tiles are many
(``MAX_TILES``); the layer then keeps its GEMM kernels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import class_codes
from ._lc_function import Geometry, _channels_last, _memory_format

__all__: list[str] = []

#: The most tiles (``prod(P)``) run as convolutions. Mid case (16->32), fwd+bwd against the
#: GEMM kernels: P=(2, 2) 3.1x faster, (4, 4) 1.3x faster, (8, 8) 2.3x slower; main case
#: (3->64): 1.6x, 1.0x, 2.6x slower.
MAX_TILES = 16

_CONV: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def period(codes: Tensor, dim: int) -> int:
    """The smallest ``p`` with ``codes`` periodic along ``dim`` (``codes[i] == codes[i + p]``);
    the dim's size if none is smaller."""
    size = codes.shape[dim]
    rows = codes.movedim(dim, 0).reshape(size, -1)
    # a period p has rows[p] == rows[0]: one pass finds the candidates, each checked in full
    candidates = torch.nonzero((rows[1:] == rows[0]).all(1)).flatten() + 1
    for p in candidates.tolist():
        if torch.equal(rows[p:], rows[:-p]):
            return int(p)
    return size


def is_periodic(codes: Tensor, periods: tuple[int, ...]) -> bool:
    """Whether ``codes`` repeats with ``periods`` along its leading dims."""
    for d, p in enumerate(periods):
        size = codes.shape[d]
        if p < size and not torch.equal(codes.narrow(d, p, size - p), codes.narrow(d, 0, size - p)):
            return False
    return True


@dataclass
class TiledPlan:
    """What a tiled layer's forward gathers: the kernels ``theta[kernel_index] * kernel_sign``
    of shape ``(*P, O, C/G, *k)`` and, where the bias repeats with the same periods (its
    ``TileShare`` part does), its ``(*P, O)`` representatives (None: the layer adds its full
    bias, or has none). CPU masters; ``placed`` caches copies per device and dtype."""

    periods: tuple[int, ...]
    kernel_index: Tensor
    kernel_sign: Tensor | None
    bias_index: Tensor | None
    bias_sign: Tensor | None
    _placed: dict[tuple[torch.device, torch.dtype], tuple[Tensor | None, ...]] = field(
        default_factory=dict, repr=False
    )

    def placed(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor | None, ...]:
        """``(kernel_index, kernel_sign, bias_index, bias_sign)`` on ``device`` (signs in
        ``dtype``)."""
        key = (device, dtype)
        if key not in self._placed:
            self._placed[key] = (
                self.kernel_index.to(device),
                None if self.kernel_sign is None else self.kernel_sign.to(device, dtype),
                None if self.bias_index is None else self.bias_index.to(device),
                None if self.bias_sign is None else self.bias_sign.to(device, dtype),
            )
        return self._placed[key]


def plan_tiles(
    weight: tuple[Tensor, Tensor | None, tuple[int, ...]],
    bias: tuple[Tensor, Tensor | None, tuple[int, ...]] | None,
    n: int,
) -> TiledPlan | None:
    """The plan for a weight laid out as ``(index, sign, shape)`` (flat index and sign, CPU)
    whose first ``n`` dims are locations, or None where it has more than ``MAX_TILES`` tiles
    (an untied weight has one tile per location)."""
    index, sign, shape = weight
    codes = class_codes(index, sign).view(shape)
    periods = tuple(period(codes, d) for d in range(n))
    if math.prod(periods) > MAX_TILES or periods == tuple(shape[:n]):
        return None
    corner = tuple(slice(0, p) for p in periods)
    kernel_sign = None if sign is None else sign.view(shape)[corner].contiguous()
    bias_index = bias_sign = None
    if bias is not None:
        b_index, b_sign, b_shape = bias
        if is_periodic(class_codes(b_index, b_sign).view(b_shape), periods):
            bias_index = b_index.view(b_shape)[corner].contiguous()
            bias_sign = None if b_sign is None else b_sign.view(b_shape)[corner].contiguous()
    return TiledPlan(
        periods, index.view(shape)[corner].contiguous(), kernel_sign, bias_index, bias_sign
    )


def tiled_conv(
    x: Tensor,
    kernels: Tensor,
    bias: Tensor | None,
    g: Geometry,
    periods: tuple[int, ...],
    groups: int,
    channels_last: bool,
) -> Tensor:
    """The locally connected layer of geometry ``g`` whose kernel at location ``i`` is
    ``kernels[i mod periods]``, as ``prod(periods)`` strided convolutions.

    ``x``: ``(B, C, *in_size)``; ``kernels``: ``(*P, O, C/G, *k)``; ``bias``: ``(*P, O)`` or
    None. Returns ``(B, O, *out_size)``, channels-last if ``channels_last``.
    """
    nd = len(g.in_size)
    steps = [s * p for s, p in zip(g.stride, periods)]
    spans = [dil * (k - 1) + 1 for k, dil in zip(g.kernel, g.dilation)]
    # Per dim and residue r: how many outputs are r modulo the period, the conv's padding q and
    # the first output of that conv that is one of ours. Residue r reads
    # ``-before + r * stride + m * step`` at its output m; a conv padded by q reads
    # ``-q + m' * step``: so q = before - r * stride where that is >= 0 (first = 0), else the
    # smallest q >= 0 congruent to it modulo step (first = (q - that) / step).
    counts: list[list[int]] = []
    pads: list[list[int]] = []
    firsts: list[list[int]] = []
    for d in range(nd):
        counts.append([-(-(g.out_size[d] - r) // periods[d]) for r in range(periods[d])])
        shifts = [g.padding[2 * d] - r * g.stride[d] for r in range(periods[d])]
        pads.append([delta if delta >= 0 else delta % steps[d] for delta in shifts])
        firsts.append([(q - delta) // steps[d] for q, delta in zip(pads[d], shifts)])
    # zeros past the conv's own padding, where the last outputs of a residue need them
    extra = [
        max(
            (first + count - 1) * steps[d] + spans[d] - (g.in_size[d] + 2 * q)
            for first, count, q in zip(firsts[d], counts[d], pads[d])
        )
        for d in range(nd)
    ]
    if any(e > 0 for e in extra):
        x = F.pad(x, [v for d in reversed(range(nd)) for v in (0, max(extra[d], 0))])
    conv = _CONV[nd]
    outs = []
    ours = []
    for r in itertools.product(*(range(p) for p in periods)):
        outs.append(
            conv(
                x,
                kernels[r],
                None if bias is None else bias[r],
                stride=steps,
                padding=[pads[d][r[d]] for d in range(nd)],
                dilation=g.dilation,
                groups=groups,
            )
        )
        ours.append(
            tuple(slice(firsts[d][r[d]], firsts[d][r[d]] + counts[d][r[d]]) for d in range(nd))
        )
    return _Interleave.apply(_Weave(periods, tuple(g.out_size), tuple(ours), channels_last), *outs)


class _Weave(NamedTuple):
    """Where each residue's conv output goes: its outputs ``ours[r]`` (one slice per spatial
    dim) are the positions ``r, r + P, ...`` of the layer's output."""

    periods: tuple[int, ...]
    out_size: tuple[int, ...]
    ours: tuple[tuple[slice, ...], ...]
    channels_last: bool

    def targets(self) -> list[tuple[slice, ...]]:
        residues = itertools.product(*(range(p) for p in self.periods))
        return [tuple(slice(i, None, p) for i, p in zip(r, self.periods)) for r in residues]


class _Interleave(torch.autograd.Function):
    """The residues' conv outputs woven into the layer's output, one copy each way.

    Through plain autograd (stack, permute, reshape, slices) this costs two passes over the
    output forward and two over its gradient backward (the slices' zero-padded gradients, then
    the conv's contiguous copy); the copies were half of a tiled layer's time. Here forward
    writes each residue straight into its strided place, and backward reads each residue's
    gradient straight into a fresh buffer in its conv output's own layout, zeroing only the
    border outputs that are not ours."""

    @staticmethod
    def forward(ctx: Any, weave: _Weave, *outs: Tensor) -> Tensor:
        first = outs[0]
        nd = len(weave.periods)
        fmt = _memory_format(weave.channels_last, nd + 2)
        shape = (first.shape[0], first.shape[1], *weave.out_size)
        y = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=fmt)
        for out, ours, target in zip(outs, weave.ours, weave.targets()):
            y[_spatial(target)].copy_(out[_spatial(ours)])
        ctx.weave = weave
        ctx.shapes = [(out.shape, _channels_last(out)) for out in outs]  # as the conv chose
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        weave: _Weave = ctx.weave
        nd = len(weave.periods)
        grads: list[Tensor | None] = [None]
        for (shape, last), ours, target in zip(ctx.shapes, weave.ours, weave.targets()):
            fmt = _memory_format(last, nd + 2)
            g = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
            everywhere = [slice(None)] * nd
            for d, part in enumerate(ours):  # the conv's outputs that are not ours: zero
                for border in (slice(0, part.start), slice(part.stop, None)):
                    g[_spatial((*everywhere[:d], border))].zero_()
            g[_spatial(ours)].copy_(grad[_spatial(target)])
            grads.append(g)
        return tuple(grads)


def _spatial(parts: tuple[slice, ...] | list[slice]) -> tuple[slice, ...]:
    """An index that takes ``parts`` of the spatial dims of a ``(B, C, *spatial)`` tensor."""
    return (slice(None), slice(None), *parts)

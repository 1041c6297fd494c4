"""Kernels for locally connected layers (private).

A locally connected layer is a convolution whose kernel differs at every output location::

    y[b, o, i, j] = bias[i, j, o]
                    + sum_{c, a, d} W[i, j, o, c, a, d] * x_pad[b, c, i*sh + a*dh, j*sw + d*dw]

with the weight stored location-major, ``W: (Ho, Wo, O, C, kh, kw)``. A 1-d layer is the 2-d case
with ``W = Wo = kw = 1`` (positions as rows, so they can be processed in blocks).

Two implementations, same arithmetic:

``_LocallyConnectedGemm`` (a custom ``torch.autograd.Function``)
    One small GEMM per output location, run as ``bmm`` over blocks of output rows (all rows at
    once for "batched"). Every ``bmm`` operand is contiguous or plainly transposed, so ATen
    hands the whole batch to the BLAS instead of falling back to one small ``mm`` (plus a
    clone) per location, which is what autograd through the permutes of a naive
    unfold+einsum/bmm runs into. Layouts:

    * the input is copied once to ``xt: (H_pad, W_pad, C, B)`` (zero padding included, batch
      innermost) and that copy is what backward keeps (input-sized, like conv keeping x);
    * a block's patches are gathered from ``xt`` into a contiguous ``PT: (n, K, B)``,
      ``K = C*kh*kw`` in the weight's own ``(C, kh, kw)`` order, so the weight is used as
      stored, never copied; they are recomputed in backward rather than saved;
    * forward: ``out (n, B, O) = PT^T @ W^T`` (``baddbmm`` adds the bias in the same pass),
      copied into ``(B, L, O)`` (moves rows of ``O``: cheap); the result is that tensor viewed
      as channels-last NCHW, made contiguous by ATen's fast NHWC -> NCHW transpose unless the
      input was channels-last. (A direct ``(L, B, O) -> (B, O, L)`` permute-copy, or writing
      each block straight into the NCHW output, costs 2-3x more on this kind of CPU.)
    * backward, per block: ``grad_out`` rows are read (strided) into a small contiguous
      ``G: (n, B, O)``, faster than a whole-tensor layout change and with no grad-sized
      temporary; ``grad_W (n, O, K) = G^T @ PT^T`` is written straight into the weight
      gradient; ``grad_PT (n, K, B) = W^T @ G^T``; ``grad_x`` is formed by ``kh*kw`` strided
      adds into a ``(H_pad, W_pad, C, B)`` buffer (no ``F.fold``); the bias gradient is a sum
      over the batch.

    Blocks of rows keep the patch and GEMM buffers small and reused (bounded memory, better
    cache use) at the price of a few more Python-level ops per block; ``rows=None`` runs one
    block. On CPU the temporaries that never leave a call (staging and chunk buffers) are
    kept per thread between calls (see ``_Workspace``). The backward is not differentiable a
    second time (``once_differentiable``).

``locally_connected_unfold``
    Plain autograd: ``F.unfold`` + ``einsum``. Slower (its backward hits the per-location
    ``mm`` fallback), but twice differentiable and usable under ``torch.func`` transforms.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__: list[str] = []


def is_compiling() -> bool:
    """Whether torch.compile is tracing (``torch.compiler.is_compiling`` is torch >= 2.3)."""
    check: Callable[[], bool] | None = getattr(torch.compiler, "is_compiling", None)
    if check is None:  # pragma: no cover - torch 2.2
        from torch._dynamo import is_compiling as dynamo_is_compiling

        check = dynamo_is_compiling
    return bool(check())


class Geometry(NamedTuple):
    """Everything that fixes the locations of an n-d locally connected layer (all ints; n = 2
    for the 1-d and 2-d layers, 3 for the 3-d one)."""

    in_size: tuple[int, ...]  # (H, W) of the unpadded input; (D, H, W) in 3-d
    kernel: tuple[int, ...]  # (kh, kw)
    stride: tuple[int, ...]
    padding: tuple[int, ...]  # per dim (before, after): (top, bottom, left, right) in 2-d
    dilation: tuple[int, ...]
    out_size: tuple[int, ...]  # (Ho, Wo)


def output_size(n: int, k: int, s: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    """Number of output positions along one axis (may be <= 0: no location)."""
    return (n + pad_lo + pad_hi - dil * (k - 1) - 1) // s + 1


def window_reads(out: int, k: int, s: int, pad_before: int, dil: int) -> Tensor:
    """Along one axis, the input position each (output position, kernel offset) reads,
    ``o * s - pad_before + i * dil``, as an ``(out, k)`` int64 tensor (outside the input: the
    padding). What both a layer's padding mask and a Keras kernel's layout are read from."""
    return torch.arange(out)[:, None] * s - pad_before + torch.arange(k)[None, :] * dil


def make_geometry(
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Geometry:
    """Build a ``Geometry``; ``padding`` is ``(before, after)`` per dim, flat (``(top, bottom,
    left, right)`` in 2-d)."""
    n = len(in_size)
    out = tuple(
        output_size(
            in_size[d], kernel[d], stride[d], padding[2 * d], padding[2 * d + 1], dilation[d]
        )
        for d in range(n)
    )
    return Geometry(
        tuple(in_size), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), out
    )


def _rest(sizes: Sequence[int]) -> int:
    """The positions of one output "row" (every output dim but the first): chunks are rows."""
    return math.prod(sizes[1:])


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` (batched) is in the channels-last memory format of its rank."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return (
        fmt is not None and x.shape[0] > 1 and not x.is_contiguous()
        and x.is_contiguous(memory_format=fmt)
    )  # fmt: skip


def _memory_format(channels_last: bool, ndim: int) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


# ----------------------------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------------------------


def _to_hwcb(x: Tensor, g: Geometry) -> Tensor:
    """``x (B, C, *S)`` -> zero-padded, contiguous ``(*S_pad, C, B)``."""
    n = len(g.in_size)
    order = (*range(2, 2 + n), 1, 0)
    if not any(g.padding):
        return x.permute(order).contiguous()
    xt = x.new_zeros(*_padded_size(g), x.shape[1], x.shape[0])
    xt[_unpadded(g)] = x.permute(order)
    return xt


def _padded_size(g: Geometry) -> list[int]:
    """The input's spatial size with its zero padding."""
    return [s + g.padding[2 * d] + g.padding[2 * d + 1] for d, s in enumerate(g.in_size)]


def _unpadded(g: Geometry) -> tuple[slice, ...]:
    """The input's place inside its padded copy, one slice per spatial dim."""
    return tuple(slice(g.padding[2 * d], g.padding[2 * d] + s) for d, s in enumerate(g.in_size))


def _gather(xt: Tensor, g: Geometry, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
    """Patches of output rows ``[r0, r1)`` (first output dim): contiguous
    ``(n*rest, C*prod(k), B)``, the patch in the weight's ``(C, *k)`` order."""
    nd = len(g.in_size)
    c, b = xt.shape[nd], xt.shape[nd + 1]
    n = r1 - r0
    spans = [d_ * (k - 1) + 1 for k, d_ in zip(g.kernel, g.dilation)]
    v = xt.narrow(0, r0 * g.stride[0], (n - 1) * g.stride[0] + spans[0])
    for d in range(nd):  # each unfold appends its kernel dim: (n, *O_rest, C, B, *k)
        v = v.unfold(d, spans[d], g.stride[d])[..., :: g.dilation[d]]
    v = v.permute(*range(nd), nd, *range(nd + 2, 2 * nd + 2), nd + 1)  # (n, *O, C, *k, B)
    shape = (n, *g.out_size[1:], c, *g.kernel, b)
    out = torch.empty(shape, dtype=xt.dtype, device=xt.device) if out is None else out.view(shape)
    out.copy_(v)
    return out.view(n * _rest(g.out_size), c * math.prod(g.kernel), b)


def _scatter_add(gxt: Tensor, gpt: Tensor, g: Geometry, r0: int, r1: int) -> None:
    """Adds patch gradients ``gpt (n*rest, C*prod(k), B)`` of rows ``[r0, r1)`` into ``gxt``."""
    nd = len(g.in_size)
    c, b = gxt.shape[nd], gxt.shape[nd + 1]
    n = r1 - r0
    gp = gpt.view(n, *g.out_size[1:], c, *g.kernel, b)
    counts = (n, *g.out_size[1:])
    starts = (r0 * g.stride[0], *([0] * (nd - 1)))
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        target = tuple(
            slice(start + a * dil, start + a * dil + s * (count - 1) + 1, s)
            for start, a, dil, s, count in zip(starts, offset, g.dilation, g.stride, counts)
        )
        index: tuple[Any, ...] = (Ellipsis, *offset, slice(None))
        gxt[target] += gp[index]


class _Workspace(threading.local):
    """Per-thread scratch buffers, reused across calls (CPU, eager mode only).

    Fresh multi-MB CPU allocations are page-faulted in on every call once glibc has handed the
    memory back to the OS (it trims the heap top past a threshold), and first-touch faults are
    expensive in VMs: on the 2-core CPU VMs this was measured on, re-faulting the
    output-sized temporary and the chunk buffers cost about as much as the GEMMs. So the
    temporaries that never escape a call (the (B, L, O) staging tensor and the per-chunk
    patch / GEMM / grad buffers) live here; outputs and gradients are always fresh tensors.
    Only one forward or backward uses them at a time per thread (nothing is held across
    calls), so reuse is safe; ``free_workspace()`` releases them.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}


_WORKSPACE = _Workspace()


def _scratch(role: str, numel: int, like: Tensor) -> Tensor:
    """A flat buffer of ``numel`` elements of ``like``'s dtype: a reused one on CPU in eager
    mode, else a fresh one. Its contents are garbage."""
    if like.device.type != "cpu" or is_compiling():
        return like.new_empty(numel)
    key = (role, like.dtype, torch.is_inference_mode_enabled())
    buf = _WORKSPACE.buffers.get(key)
    if buf is None or buf.numel() < numel:
        _WORKSPACE.buffers.pop(key, None)  # free the old one before allocating the new one
        buf = like.new_empty(numel)
        _WORKSPACE.buffers[key] = buf
    return buf[:numel]


def free_workspace() -> None:
    """Release the calling thread's cached scratch buffers."""
    _WORKSPACE.buffers.clear()


def workspace_bytes() -> int:
    """Bytes held by the calling thread's cached scratch buffers."""
    return sum(b.numel() * b.element_size() for b in _WORKSPACE.buffers.values())


SCRATCH_BUDGET = 4 << 20  # bytes of patches + GEMM output per chunk (see rows_for_budget)


def rows_for_budget(
    g: Geometry,
    batch: int,
    k: int,
    out_channels: int,
    dtype: torch.dtype,
    budget: int | None = None,
) -> int:
    """Output rows per chunk so that one chunk's patches and GEMM output fit in ``budget``
    bytes (default ``SCRATCH_BUDGET``); at least 1."""
    budget = SCRATCH_BUDGET if budget is None else budget
    itemsize = dtype.itemsize
    per_row = _rest(g.out_size) * batch * (k + out_channels) * itemsize
    return max(1, budget // max(per_row, 1))


def _row_chunks(ho: int, rows: int | None) -> list[tuple[int, int]]:
    """``[r0, r1)`` blocks of at most ``rows`` output rows, balanced (30 rows by 12: 10+10+10)."""
    step = ho if rows is None or rows <= 0 else min(rows, ho)
    step = -(-ho // -(-ho // step))
    return [(r0, min(r0 + step, ho)) for r0 in range(0, ho, step)]


# ----------------------------------------------------------------------------------------------
# the custom autograd Function
# ----------------------------------------------------------------------------------------------


def _forward_core(
    x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None
) -> tuple[Tensor, Tensor, bool]:
    """``(y, xt, channels_last)``: the layer's output, the padded ``(H, W, C, B)`` copy of x
    (what a backward needs) and whether x (and so y) is channels-last."""
    b, c = x.shape[:2]
    nd = len(g.out_size)
    ho, wo = g.out_size[0], _rest(g.out_size)  # chunks are rows of the first output dim
    oc = weight.shape[nd]
    k = c * math.prod(g.kernel)
    groups = c // weight.shape[nd + 1]  # each group: its own C/G inputs to its own O/G outputs
    kg, og = k // groups, oc // groups
    channels_last = _channels_last(x)
    w = weight.reshape(ho * wo * groups, og, kg)  # a view for the usual contiguous weight
    bias_l = None if bias is None else bias.reshape(ho * wo * groups, 1, og)
    xt = _to_hwcb(x, g)
    chunks = _row_chunks(ho, rows)
    m = (chunks[0][1] - chunks[0][0]) * wo  # locations per chunk (the first is the largest)
    pbuf = _scratch("patches", m * k * b, x)  # patches of one chunk
    obuf = _scratch("gemm", m * b * oc, x)  # GEMM output of one chunk
    # (B, L, O) staging tensor; with a channels-last input it *is* the output (fresh)
    blo = (
        x.new_empty(b, ho * wo, oc)
        if channels_last
        else _scratch("staging", b * ho * wo * oc, x).view(b, ho * wo, oc)
    )
    for r0, r1 in chunks:
        loc = slice(r0 * wo, r1 * wo)
        n = (r1 - r0) * wo
        gloc = slice(r0 * wo * groups, r1 * wo * groups)
        pt = _gather(xt, g, r0, r1, pbuf[: n * k * b]).view(n * groups, kg, b)
        o = obuf[: n * b * oc].view(n * groups, b, og)
        if bias_l is not None:
            torch.baddbmm(bias_l[gloc], pt.transpose(1, 2), w[gloc].transpose(1, 2), out=o)
        else:
            torch.bmm(pt.transpose(1, 2), w[gloc].transpose(1, 2), out=o)
        # (n, G, B, O/G) -> (B, n, O): moves rows of O/G: cheap
        blo[:, loc].view(b, n, groups, og).copy_(o.view(n, groups, b, og).permute(2, 0, 1, 3))
    y = blo.view(b, *g.out_size, oc).permute(0, nd + 1, *range(1, nd + 1))  # channels-last
    if channels_last:
        return y, xt, True
    out = x.new_empty(b, oc, *g.out_size)  # fresh even where the view happens to be contiguous
    return out.copy_(y), xt, False  # ATen's fast NHWC -> NCHW transpose


def _backward_core(
    xt: Tensor | None,
    x_shape: tuple[int, int],
    weight: Tensor,
    grad_out: Tensor,
    g: Geometry,
    rows: int | None,
    need_x: bool,
    need_w: bool,
    need_b: bool,
    channels_last: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of the layer for ``grad_out (B, O, Ho, Wo)``: ``(grad_x, grad_w, grad_b)``,
    each None unless asked for. ``xt`` (the padded ``(H, W, C, B)`` input) is needed only for
    ``grad_w``; ``x_shape`` is ``(C, B)``."""
    c, b = x_shape
    nd = len(g.out_size)
    ho, wo = g.out_size[0], _rest(g.out_size)
    oc = weight.shape[nd]
    k = c * math.prod(g.kernel)
    groups = c // weight.shape[nd + 1]
    kg, og = k // groups, oc // groups
    dtype = grad_out.dtype
    w = weight.reshape(ho * wo * groups, og, kg)
    # never accumulate in 16-bit floats: the prod(k) overlapping adds go to a float32 buffer
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    gxt = grad_out.new_zeros((*_padded_size(g), c, b), dtype=acc) if need_x else None
    gw = grad_out.new_empty(ho * wo * groups, og, kg) if need_w else None
    gb = grad_out.new_empty(ho * wo, oc) if need_b else None
    chunks = _row_chunks(ho, rows)
    m = (chunks[0][1] - chunks[0][0]) * wo
    gbuf = _scratch("grad", m * b * oc, grad_out)  # grad_out of one chunk as (n, B, O)
    pbuf = _scratch("patches", m * k * b, grad_out) if (need_w or need_x) else None
    for r0, r1 in chunks:
        loc = slice(r0 * wo, r1 * wo)
        gloc = slice(r0 * wo * groups, r1 * wo * groups)
        n = (r1 - r0) * wo
        gl = gbuf[: n * b * oc].view(n * groups, b, og)
        # a strided read into a small contiguous (n, G, B, O/G) buffer: faster than
        # whole-tensor layout changes, and no grad_out-sized temporary
        go = grad_out[:, :, r0:r1].unflatten(1, (groups, og))  # (B, G, O/G, rows, *rest)
        order = (*range(3, 3 + nd), 1, 0, 2)
        gl.view(r1 - r0, *g.out_size[1:], groups, b, og).copy_(go.permute(order))
        if gb is not None:
            torch.sum(gl.view(n, groups, b, og), 2, out=gb[loc].view(n, groups, og))
        if gw is not None:
            assert pbuf is not None and xt is not None
            pt = _gather(xt, g, r0, r1, pbuf[: n * k * b]).view(n * groups, kg, b)
            torch.bmm(gl.transpose(1, 2), pt.transpose(1, 2), out=gw[gloc])
        if gxt is not None:
            assert pbuf is not None
            gpt = pbuf[: n * k * b].view(n * groups, kg, b)
            torch.bmm(w[gloc].transpose(1, 2), gl.transpose(1, 2), out=gpt)
            _scatter_add(gxt, gpt.view(n, k, b), g, r0, r1)
    del gbuf, pbuf
    grad_x = grad_w = grad_b = None
    if gxt is not None:
        gxt = gxt[_unpadded(g)]
        fmt = _memory_format(channels_last, nd + 2)
        grad_x = gxt.permute(nd + 1, nd, *range(nd)).to(dtype, memory_format=fmt)
    if gw is not None:
        grad_w = gw.view(weight.shape)
    if gb is not None:
        grad_b = gb.view(*g.out_size, oc)
    return grad_x, grad_w, grad_b


class _LocallyConnectedGemm(torch.autograd.Function):
    """``y = LC(x; W, bias)`` with location-batched GEMMs (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None
    ) -> Tensor:
        y, xt, channels_last = _forward_core(x, weight, bias, g, rows)
        # The padded (H, W, C, B) copy of x is saved instead of x: backward needs exactly it
        # (it costs one input-sized buffer, like conv saving its input).
        ctx.save_for_backward(xt, weight)
        ctx.geometry = g
        ctx.rows = rows
        ctx.has_bias = bias is not None
        ctx.channels_last = channels_last
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        xt, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        nd = len(ctx.geometry.in_size)
        grad_x, grad_w, grad_b = _backward_core(
            xt,
            (xt.shape[nd], xt.shape[nd + 1]),
            weight,
            grad_out,
            ctx.geometry,
            ctx.rows,
            need_x,
            need_w,
            need_b and ctx.has_bias,
            ctx.channels_last,
        )
        return grad_x, grad_w, grad_b, None, None


class _LocallyConnectedTransposeGemm(torch.autograd.Function):
    """``z = LC(.; W)^T y + bias``: the adjoint of the layer of geometry ``g`` (whose input is
    z and output y), on the same GEMM kernels: its forward is the layer's input gradient, its
    input gradient the layer's forward, its weight gradient the layer's weight gradient with
    the roles of input and output gradient swapped."""

    @staticmethod
    def forward(
        ctx: Any,
        y: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        g: Geometry,
        rows: int | None,
        groups: int,
    ) -> Tensor:
        nd = len(g.out_size)
        z, _, _ = _backward_core(
            None, (weight.shape[nd + 1] * groups, y.shape[0]), weight, y, g, rows, True, False,
            False, _channels_last(y),
        )  # fmt: skip
        assert z is not None
        if bias is not None:
            z = z.add_(bias.permute(nd, *range(nd)))
        ctx.save_for_backward(y, weight)
        ctx.geometry = g
        ctx.rows = rows
        ctx.has_bias = bias is not None
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        y, weight = ctx.saved_tensors
        g: Geometry = ctx.geometry
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        grad_y = grad_w = grad_b = None
        xt = None
        if need_y:
            grad_y, xt, _ = _forward_core(grad_z, weight, None, g, ctx.rows)
        if need_w:
            if xt is None:
                xt = _to_hwcb(grad_z, g)
            nd = len(g.out_size)
            _, grad_w, _ = _backward_core(
                xt, (xt.shape[nd], xt.shape[nd + 1]), weight, y, g, ctx.rows, False, True,
                False, False,
            )  # fmt: skip
        if need_b and ctx.has_bias:
            nd = len(g.in_size)
            grad_b = grad_z.sum(0).permute(*range(1, nd + 1), 0)
        return grad_y, grad_w, grad_b, None, None, None


# ----------------------------------------------------------------------------------------------
# plain-autograd implementation
# ----------------------------------------------------------------------------------------------


def locally_connected_unfold(x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry) -> Tensor:
    """Plain autograd (``F.unfold`` + ``einsum``; in 3-d ``Tensor.unfold`` per dim): slower,
    twice differentiable, vmap-able."""
    b = x.shape[0]
    nd = len(g.out_size)
    locations = math.prod(g.out_size)
    oc = weight.shape[nd]
    if any(g.padding):
        x = F.pad(x, [p for d in reversed(range(nd)) for p in g.padding[2 * d : 2 * d + 2]])
    if nd == 2:
        cols = F.unfold(x, g.kernel, dilation=g.dilation, stride=g.stride)  # (B, K, L)
    else:
        v = x
        for d in range(nd):  # (B, C, *O, *k)
            span = g.dilation[d] * (g.kernel[d] - 1) + 1
            v = v.unfold(2 + d, span, g.stride[d])[..., :: g.dilation[d]]
        v = v.permute(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (B, C, *k, *O)
        cols = v.reshape(b, -1, locations)
    groups = x.shape[1] // weight.shape[nd + 1]
    w = weight.reshape(locations, groups, oc // groups, -1)
    y = torch.einsum("bgkl,lgok->bgol", cols.unflatten(1, (groups, -1)), w).flatten(1, 2)
    if bias is not None:
        y = y + bias.reshape(locations, oc).t()
    return y.reshape(b, oc, *g.out_size)


def locally_connected_transpose_unfold(
    y: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, groups: int = 1
) -> Tensor:
    """The adjoint in plain autograd (``einsum`` + ``F.fold``): slower, twice differentiable."""
    b = y.shape[0]
    ho, wo = g.out_size
    oc = weight.shape[2]
    h, w_in = g.in_size
    pt, pb, pl, pr = g.padding
    w = weight.reshape(ho * wo, groups, oc // groups, -1)  # (L, G, O/G, C/G * k)
    cols = torch.einsum("bgol,lgok->bgkl", y.reshape(b, groups, oc // groups, ho * wo), w).flatten(
        1, 2
    )  # (B, C * k, L), group-major channels
    z = F.fold(cols, (h + pt + pb, w_in + pl + pr), g.kernel, dilation=g.dilation, stride=g.stride)
    z = z[:, :, pt : pt + h, pl : pl + w_in]
    if bias is not None:
        z = z + bias.permute(2, 0, 1)
    return z


def locally_connected_transpose_gemm(
    y: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    g: Geometry,
    rows: int | None = None,
    groups: int = 1,
) -> Tensor:
    """The adjoint of ``locally_connected_gemm`` (plus a per-location bias), on its kernels."""
    return _LocallyConnectedTransposeGemm.apply(y, weight, bias, g, rows, groups)


def locally_connected_gemm(
    x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None = None
) -> Tensor:
    """The custom-``Function`` implementation; ``rows``: output rows per chunk (None: all)."""
    return _LocallyConnectedGemm.apply(x, weight, bias, g, rows)

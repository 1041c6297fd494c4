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
    """Everything that fixes the locations of a 2-d locally connected layer (all ints)."""

    in_size: tuple[int, int]  # (H, W) of the unpadded input
    kernel: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # (top, bottom, left, right)
    dilation: tuple[int, int]
    out_size: tuple[int, int]  # (Ho, Wo)


def output_size(n: int, k: int, s: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    """Number of output positions along one axis (may be <= 0: no location)."""
    return (n + pad_lo + pad_hi - dil * (k - 1) - 1) // s + 1


def make_geometry(
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Geometry:
    """Build a ``Geometry``; ``padding`` is ``(top, bottom, left, right)``."""
    pt, pb, pl, pr = padding
    ho = output_size(in_size[0], kernel[0], stride[0], pt, pb, dilation[0])
    wo = output_size(in_size[1], kernel[1], stride[1], pl, pr, dilation[1])
    return Geometry(
        (in_size[0], in_size[1]),
        (kernel[0], kernel[1]),
        (stride[0], stride[1]),
        (pt, pb, pl, pr),
        (dilation[0], dilation[1]),
        (ho, wo),
    )


# ----------------------------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------------------------


def _to_hwcb(x: Tensor, g: Geometry) -> Tensor:
    """``x (B, C, H, W)`` -> zero-padded, contiguous ``(H_pad, W_pad, C, B)``."""
    b, c, h, w = x.shape
    pt, pb, pl, pr = g.padding
    if pt == pb == pl == pr == 0:
        return x.permute(2, 3, 1, 0).contiguous()
    xt = x.new_zeros(h + pt + pb, w + pl + pr, c, b)
    xt[pt : pt + h, pl : pl + w] = x.permute(2, 3, 1, 0)
    return xt


def _gather(xt: Tensor, g: Geometry, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
    """Patches of output rows ``[r0, r1)``: contiguous ``(n*Wo, C*kh*kw, B)``."""
    _, _, c, b = xt.shape
    kh, kw = g.kernel
    sh, sw = g.stride
    dh, dw = g.dilation
    wo = g.out_size[1]
    n = r1 - r0
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    v = xt.narrow(0, r0 * sh, (n - 1) * sh + span_h)
    v = v.unfold(0, span_h, sh)[..., ::dh]  # (n, W_pad, C, B, kh)
    v = v.unfold(1, span_w, sw)[..., ::dw]  # (n, Wo, C, B, kh, kw)
    v = v.permute(0, 1, 2, 4, 5, 3)  # (n, Wo, C, kh, kw, B), a view
    if out is None:
        out = torch.empty((n, wo, c, kh, kw, b), dtype=xt.dtype, device=xt.device)
    else:
        out = out.view(n, wo, c, kh, kw, b)
    out.copy_(v)
    return out.view(n * wo, c * kh * kw, b)


def _scatter_add(gxt: Tensor, gpt: Tensor, g: Geometry, r0: int, r1: int) -> None:
    """Adds patch gradients ``gpt (n*Wo, C*kh*kw, B)`` of rows ``[r0, r1)`` into ``gxt``."""
    _, _, c, b = gxt.shape
    kh, kw = g.kernel
    sh, sw = g.stride
    dh, dw = g.dilation
    wo = g.out_size[1]
    n = r1 - r0
    gp = gpt.view(n, wo, c, kh, kw, b)
    for a in range(kh):
        top = r0 * sh + a * dh
        rows = slice(top, top + sh * (n - 1) + 1, sh)
        for d in range(kw):
            left = d * dw
            cols = slice(left, left + sw * (wo - 1) + 1, sw)
            gxt[rows, cols] += gp[:, :, :, a, d, :]


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
    per_row = g.out_size[1] * batch * (k + out_channels) * itemsize
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
    ho, wo = g.out_size
    oc = weight.shape[2]
    k = c * g.kernel[0] * g.kernel[1]
    groups = c // weight.shape[3]  # each group: its own C/G inputs to its own O/G outputs
    kg, og = k // groups, oc // groups
    channels_last = (
        b > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )
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
    y = blo.view(b, ho, wo, oc).permute(0, 3, 1, 2)  # the result, channels-last
    if channels_last:
        return y, xt, True
    out = x.new_empty(b, oc, ho, wo)  # fresh even where the view happens to be contiguous
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
    h, w_in = g.in_size
    ho, wo = g.out_size
    oc = weight.shape[2]
    k = c * g.kernel[0] * g.kernel[1]
    groups = c // weight.shape[3]
    kg, og = k // groups, oc // groups
    pt_, pb_, pl_, pr_ = g.padding
    dtype = grad_out.dtype
    w = weight.reshape(ho * wo * groups, og, kg)
    # never accumulate in 16-bit floats: the kh*kw overlapping adds go to a float32 buffer
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    gxt = grad_out.new_zeros((h + pt_ + pb_, w_in + pl_ + pr_, c, b), dtype=acc) if need_x else None
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
        go = grad_out[:, :, r0:r1].unflatten(1, (groups, og))  # (B, G, O/G, rows, Wo)
        gl.view(r1 - r0, wo, groups, b, og).copy_(go.permute(3, 4, 1, 0, 2))
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
        gxt = gxt[pt_ : pt_ + h, pl_ : pl_ + w_in]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        grad_x = gxt.permute(3, 2, 0, 1).to(dtype, memory_format=fmt)
    if gw is not None:
        grad_w = gw.view(weight.shape)
    if gb is not None:
        grad_b = gb.view(ho, wo, oc)
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
        grad_x, grad_w, grad_b = _backward_core(
            xt,
            (xt.shape[2], xt.shape[3]),
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
        ctx: Any, y: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None
    ) -> Tensor:
        channels_last = (
            y.shape[0] > 1
            and not y.is_contiguous()
            and y.is_contiguous(memory_format=torch.channels_last)
        )
        z, _, _ = _backward_core(
            None, (weight.shape[3], y.shape[0]), weight, y, g, rows, True, False, False,
            channels_last,
        )  # fmt: skip
        assert z is not None
        if bias is not None:
            z = z.add_(bias.permute(2, 0, 1))
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
            _, grad_w, _ = _backward_core(
                xt, (xt.shape[2], xt.shape[3]), weight, y, g, ctx.rows, False, True, False,
                False,
            )  # fmt: skip
        if need_b and ctx.has_bias:
            grad_b = grad_z.sum(0).permute(1, 2, 0)
        return grad_y, grad_w, grad_b, None, None


# ----------------------------------------------------------------------------------------------
# plain-autograd implementation
# ----------------------------------------------------------------------------------------------


def locally_connected_unfold(x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry) -> Tensor:
    """Plain autograd (``F.unfold`` + ``einsum``): slower, twice differentiable, vmap-able."""
    b = x.shape[0]
    ho, wo = g.out_size
    oc = weight.shape[2]
    pt, pb, pl, pr = g.padding
    if pt or pb or pl or pr:
        x = F.pad(x, (pl, pr, pt, pb))
    cols = F.unfold(x, g.kernel, dilation=g.dilation, stride=g.stride)  # (B, K, L)
    groups = x.shape[1] // weight.shape[3]
    w = weight.reshape(ho * wo, groups, oc // groups, -1)
    y = torch.einsum("bgkl,lgok->bgol", cols.unflatten(1, (groups, -1)), w).flatten(1, 2)
    if bias is not None:
        y = y + bias.reshape(ho * wo, oc).t()
    return y.reshape(b, oc, ho, wo)


def locally_connected_transpose_unfold(
    y: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry
) -> Tensor:
    """The adjoint in plain autograd (``einsum`` + ``F.fold``): slower, twice differentiable."""
    b = y.shape[0]
    ho, wo = g.out_size
    oc = weight.shape[2]
    h, w_in = g.in_size
    pt, pb, pl, pr = g.padding
    w = weight.reshape(ho * wo, oc, -1)
    cols = torch.einsum("bol,lok->bkl", y.reshape(b, oc, ho * wo), w)
    z = F.fold(cols, (h + pt + pb, w_in + pl + pr), g.kernel, dilation=g.dilation, stride=g.stride)
    z = z[:, :, pt : pt + h, pl : pl + w_in]
    if bias is not None:
        z = z + bias.permute(2, 0, 1)
    return z


def locally_connected_transpose_gemm(
    y: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None = None
) -> Tensor:
    """The adjoint of ``locally_connected_gemm`` (plus a per-location bias), on its kernels."""
    return _LocallyConnectedTransposeGemm.apply(y, weight, bias, g, rows)


def locally_connected_gemm(
    x: Tensor, weight: Tensor, bias: Tensor | None, g: Geometry, rows: int | None = None
) -> Tensor:
    """The custom-``Function`` implementation; ``rows``: output rows per chunk (None: all)."""
    return _LocallyConnectedGemm.apply(x, weight, bias, g, rows)

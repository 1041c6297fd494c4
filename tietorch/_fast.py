"""``fast_forward(model)``: forwards that use a tie's structure to compute less.

Every tie materializes its weight (``theta[index] * sign``) and runs the layer's own kernel. For
some layouts a cheaper computation gives the same result; this module finds them *from the
layout* (never from the tie's class, so a user's own tie with the same structure qualifies) and
installs them. One plan per layer, made off the hot path, in three steps:

1. **Detect** (``_plan``): read the tied weight's solved ``index``/``sign`` and return a plan, or
   the reason no rule applies.
2. **Plan**: a frozen record of what the forward does, holding the small index maps it gathers
   from (CPU masters, and copies placed where the parametrization lives).
3. **Run** (``FastPlan.run``): called by the layer's forward with the free vector and the input.

The rules (``docs/compute.md`` gives the measurements behind each threshold):

- ``segment-sum``: a ``Linear``/``Conv*d`` weight whose columns (input channels, or features)
  fall into classes of identical columns: sum the input over each class, then run the layer with
  one column per class.
- ``fold-groups``: a grouped conv whose groups hold the same filters: the groups become batch
  entries of one ungrouped conv (composable with ``segment-sum`` on the shared filters).
- ``circulant`` / ``toeplitz`` / ``hankel``: a ``Linear`` with that structure, as an FFT
  (circulant embedding for the other two), from ``min(out, in) >= SPECTRAL_MIN_SIZE[kind]``.
- ``diagonal-plus-constant``: a square ``Linear`` with one value on the diagonal and one off it
  (DeepSets' permutation-equivariant layer): ``a * x + b * sum(x)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from ._layout import class_codes, gather
from ._parametrization import TieParametrization, _tie_of, lone_tie
from ._torch_compat import (
    autocast_dtype,
    conv_padding_for_mode,
    del_class_member,
    has_class_member,
    original_class,
    parametrization_list,
    parametrization_lists,
    set_class_member,
)
from .errors import TieTypeError

__all__ = ["FastForwardReport", "FastPathRow", "fast_forward"]

#: Below these sizes (``min(out_features, in_features)``) the FFT of a structured ``Linear`` loses
#: to the gathered dense product at batch 256 (``benchmarks/bench_fast.py``, 2-core CPU, torch
#: 2.13, fwd+bwd: circulant 1.26x faster at 256, 0.97x at 128; Toeplitz 1.6x at 512, 1.0x at
#: 256; Hankel 1.5x at 512, 1.0x at 256).
SPECTRAL_MIN_SIZE = {"circulant": 256, "toeplitz": 512, "hankel": 512}
#: The same with fewer rows than ``SPECTRAL_MANY_ROWS`` in the input: at batch 1 the FFT's fixed
#: cost weighs more (circulant 0.75x at 256, 1.13x at 384, 1.6x at 512; Toeplitz 1.7x and
#: Hankel 1.1x at 512). Between 1 and 256 rows the batch-1 threshold is kept: the dense
#: product's cost grows with the rows faster than the FFT's, so it is the safe side.
SPECTRAL_MIN_SIZE_FEW_ROWS = {"circulant": 384, "toeplitz": 512, "hankel": 512}
SPECTRAL_MANY_ROWS = 256
#: ``segment-sum`` runs when the classes of columns are at most this share of the columns.
SEGMENT_MAX_SHARE = 0.5
#: ``diagonal-plus-constant`` from this size on (below, the dense product is as fast).
DIAGONAL_MIN_SIZE = 16

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_CONV: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.Conv1d: F.conv1d,
    nn.Conv2d: F.conv2d,
    nn.Conv3d: F.conv3d,
}


# --- the index maps a plan gathers from -------------------------------------------------------


@dataclass(frozen=True)
class _Maps:
    """Index maps of a plan: ``index`` (flat) into the free vector, ``sign`` (None: all +1;
    else shaped like the gathered tensor) and, for a general ``segment-sum``, the class of each
    column (``ids``)."""

    index: Tensor
    sign: Tensor | None = None
    ids: Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> _Maps:
        return _Maps(
            self.index.to(device),
            None if self.sign is None else self.sign.to(device, dtype),
            None if self.ids is None else self.ids.to(device),
        )


@dataclass(frozen=True)
class FastPlan:
    """What a layer's fast forward does. ``cpu`` keeps the maps on the CPU, so placing them
    (``.to()``, ``to_empty()`` after meta-device init) always starts from intact values."""

    cpu: _Maps
    maps: _Maps

    def placed(self, device: torch.device, dtype: torch.dtype) -> FastPlan:
        return dataclasses.replace(self, maps=self.cpu.to(device, dtype))

    @property
    def name(self) -> str:
        """The rule, as the report and ``summary`` print it."""
        raise NotImplementedError

    @property
    def detail(self) -> str:
        raise NotImplementedError

    def declines(self, x: Tensor) -> bool:
        """Whether this call runs the layer's own forward instead (its input is where the plan
        would lose, or autocast is on where the plan must not run under it)."""
        return False

    def run(self, module: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class _Segments:
    """Classes of the columns (input channels) of a weight, numbered by first appearance.

    ``kind`` says how to sum over them: ``"all"`` (one class), ``"blocks"`` (consecutive runs of
    ``size``), ``"strided"`` (column ``c`` in class ``c % classes``) or ``"general"`` (by
    ``ids``)."""

    kind: str
    classes: int
    columns: int

    def sum(self, x: Tensor, dim: int, ids: Tensor | None, groups: int = 1) -> Tensor:
        """``x`` summed over each class of its ``dim`` axis (accumulated in float32 at least),
        which holds ``groups`` runs of ``columns`` (a grouped conv's input: each group's
        columns fall into the same classes, kept apart per group).

        An axis split by ``unflatten``, summed, then merged back by ``flatten`` makes Inductor
        fail under dynamic shapes ("cannot determine truth value of Relational", torch 2.13),
        so no merge is left after a sum: blocks are one split of the whole axis, strided classes
        within groups and general classes an ``index_add``."""
        dtype = x.dtype
        if dtype in _LOW_PRECISION:
            x = x.float()
        dim = dim % x.dim()
        size = self.columns // self.classes
        if self.kind in ("all", "blocks"):
            out = x.unflatten(dim, (groups * self.classes, size)).sum(dim + 1)
        elif self.kind == "strided" and groups == 1:
            out = x.unflatten(dim, (size, self.classes)).sum(dim)
        else:  # ``ids``: the class of every column of every group (laid out at plan time)
            assert ids is not None and ids.numel() == groups * self.columns
            shape = list(x.shape)
            shape[dim] = groups * self.classes
            out = x.new_zeros(shape).index_add(dim, ids, x)
        return out.to(dtype)


@dataclass(frozen=True)
class _ReducedPlan(FastPlan):
    """``segment-sum`` and ``fold-groups``: the layer run on a smaller input with a smaller
    weight of shape ``shape`` gathered from ``maps``."""

    shape: tuple[int, ...]
    segments: _Segments | None
    fold: int  # groups folded into the batch (1: none)
    bias_in_conv: bool  # with fold: the bias is the same in every group, so the conv adds it
    # The reduced weight reads the free vector in order (index 0 .. n, all signs +1): a view
    # (the described layouts: ShareAlong's kept dims, ShareAcrossGroups' block).
    reads_in_order: bool = False

    @property
    def name(self) -> str:
        parts = (["fold-groups"] if self.fold > 1 else []) + (
            ["segment-sum"] if self.segments is not None else []
        )
        return " + ".join(parts)

    @property
    def detail(self) -> str:
        words = []
        if self.fold > 1:
            words.append(f"{self.fold} groups folded into the batch")
        if self.segments is not None:
            s = self.segments
            words.append(f"{s.columns} input columns summed into {s.classes} ({s.kind})")
        return "; ".join(words)

    def run(self, module: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        if self.reads_in_order:  # the reduced weight is the free vector itself: no gather
            weight = theta.view(self.shape)
        else:
            weight = gather(theta, self.maps.index, self.maps.sign, self.shape)
        bias = _bias(module)
        if isinstance(module, nn.Linear):
            assert self.segments is not None
            return F.linear(self.segments.sum(x, -1, self.maps.ids), weight, bias)
        assert isinstance(module, nn.modules.conv._ConvNd)
        spatial = len(module.kernel_size)
        unbatched = x.dim() == spatial + 1
        if unbatched:
            x = x.unsqueeze(0)
        batch, channels, *size = x.shape
        groups = module.groups
        if self.fold > 1:
            x = _laid_out(x.reshape(batch * self.fold, channels // self.fold, *size))
            groups //= self.fold
        if self.segments is not None:
            x = self.segments.sum(x, 1, self.maps.ids, groups)
        if self.fold > 1:
            out_per_group = weight.shape[0]
            shared = bias[:out_per_group] if bias is not None and self.bias_in_conv else None
            y = _conv(module, x, weight, shared, groups)
            y = y.reshape(batch, self.fold * out_per_group, *y.shape[2:])
            if bias is not None and not self.bias_in_conv:
                y = y + bias.view(-1, *([1] * spatial)).to(y.dtype)
        else:
            y = _conv(module, x, weight, bias, groups)
        return y.squeeze(0) if unbatched else y


@dataclass(frozen=True)
class _SpectralPlan(FastPlan):
    """A circulant, Toeplitz or Hankel ``Linear`` as a circular convolution of length
    ``length`` (the first column and row gathered into one vector ``a``, zeros between):
    ``y = irfft(rfft(a) * rfft(x))[:out]``; a Hankel one (``W[i, j] = a[i + j]``) as a circular
    correlation (the spectrum of ``x`` conjugated)."""

    kind: str  # "circulant", "toeplitz" or "hankel"
    out_features: int
    length: int

    @property
    def name(self) -> str:
        return self.kind

    @property
    def detail(self) -> str:
        return f"FFT of length {self.length}"

    def declines(self, x: Tensor) -> bool:
        size = min(self.out_features, x.shape[-1])
        rows = x.numel() // max(x.shape[-1], 1)
        if rows < SPECTRAL_MANY_ROWS and size < SPECTRAL_MIN_SIZE_FEW_ROWS[self.kind]:
            return True  # the dense product wins here
        # Under autocast the dense product runs in its low precision, while an FFT has no
        # half-precision kernels on the CPU and must not accumulate in one anyway: the layer's
        # own (gathered) forward is what autocast expects.
        return autocast_dtype(x.device.type) is not None

    def run(self, module: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        out_dtype = torch.promote_types(x.dtype, theta.dtype)
        compute = torch.promote_types(out_dtype, torch.float32)  # a half model: FFT in float32
        a = gather(theta.to(compute), self.maps.index, _as(self.maps.sign, compute), (-1,))
        correlate = self.kind == "hankel"
        y = _CircularProduct.apply(x.to(compute), a, self.length, self.out_features, correlate)
        bias = _bias(module)
        if bias is not None:
            y = y + bias.to(compute)
        return y.to(out_dtype)


class _CircularProduct(torch.autograd.Function):
    """``y = (a circularly convolved with x)[..., :m]`` by FFT, ``x`` zero-padded to length
    ``L``: ``y[i] = sum_j a[(i - j) % L] x[j]`` (a Toeplitz product); with ``correlate``,
    ``y[i] = sum_j a[(i + j) % L] x[j]`` (a Hankel product: the spectrum of ``x`` conjugated).

    Written out, not left to autograd through ``rfft``/``irfft``, so that only ``x`` and the
    spectrum of ``a`` are kept for the backward pass, spectra are multiplied in place and rows
    are transformed in chunks of about ``m * n / (4 L)`` rows: the peak memory stays at most that of
    the gathered dense product (whose weight alone is ``m * n``). The backward is the adjoint:
    for a convolution ``grad_x`` correlates ``a`` with ``grad_y`` and ``grad_a`` correlates
    ``grad_y`` with ``x``; for a correlation both are the other way round.
    """

    # torch.func (vmap, grad, per-sample gradients) runs it: the forward and backward are
    # written without writes into preallocated tensors, so vmap can batch them.
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, a: Tensor, length: int, out_features: int, correlate: bool) -> Tensor:
        spectrum = torch.fft.rfft(a, n=length)
        rows = x.reshape(-1, x.shape[-1])
        parts = []
        for start, stop in _chunks(rows.shape[0], out_features, x.shape[-1], length):
            product = torch.fft.rfft(rows[start:stop], n=length)
            if correlate:
                product = _conjugate(product)
            parts.append(torch.fft.irfft(product.mul_(spectrum), n=length)[:, :out_features])
        y = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
        return y.view(*x.shape[:-1], out_features)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, a, length, _, correlate = inputs
        ctx.save_for_backward(x, a)
        ctx.length, ctx.correlate = length, correlate

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, a = ctx.saved_tensors
        length, correlate = ctx.length, ctx.correlate
        spectrum = torch.fft.rfft(a, n=length)
        rows, grads = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_rows, cross = [], None
        for start, stop in _chunks(rows.shape[0], grads.shape[-1], rows.shape[-1], length):
            grad_spectrum = torch.fft.rfft(grads[start:stop], n=length)
            if need_a:
                part = torch.fft.rfft(rows[start:stop], n=length)
                if not correlate:
                    part = _conjugate(part)
                part = part.mul_(grad_spectrum).sum(0)
                cross = part if cross is None else cross + part
                del part
            if need_x:
                if correlate:
                    grad_spectrum = _conjugate(grad_spectrum).mul_(spectrum)
                else:
                    grad_spectrum = grad_spectrum.mul_(spectrum.conj())
                block = torch.fft.irfft(grad_spectrum, n=length)[:, : rows.shape[-1]]
                grad_rows.append(block)
        grad_x = None
        if need_x:
            grad_x = grad_rows[0] if len(grad_rows) == 1 else torch.cat(grad_rows)
            grad_x = grad_x.reshape(x.shape)
        grad_a = None if cross is None else torch.fft.irfft(cross, n=length)
        return grad_x, grad_a, None, None, None


def _conjugate(spectrum: Tensor) -> Tensor:
    """``spectrum`` conjugated in place (a fresh FFT output: nobody else holds it)."""
    spectrum.imag.neg_()
    return spectrum


def _chunks(rows: int, out: int, features: int, length: int) -> Iterator[tuple[int, int]]:
    """Row ranges whose spectra (``rows x length``) together stay within a quarter of the
    dense weight's ``out x features`` entries, or 2**16 entries for small layers (where a chunk
    costs more in overhead than its memory is worth)."""
    step = max(1, max(out * features // 4, 2**16) // length)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


@dataclass(frozen=True)
class _DiagonalPlan(FastPlan):
    """A square ``Linear`` with ``d`` on the diagonal and ``c`` elsewhere:
    ``y = (d - c) * x + c * sum(x)`` (``maps.index`` holds the two entries' classes)."""

    features: int

    @property
    def name(self) -> str:
        return "diagonal-plus-constant"

    @property
    def detail(self) -> str:
        return f"O(n) instead of O(n^2) for n={self.features}"

    def run(self, module: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        out_dtype = autocast_dtype(x.device.type) or torch.promote_types(x.dtype, theta.dtype)
        compute = torch.promote_types(torch.promote_types(x.dtype, theta.dtype), torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            d, c = gather(theta.to(compute), self.maps.index, _as(self.maps.sign, compute), (2,))
            xc = x.to(compute)
            y = torch.addcmul(c * xc.sum(-1, keepdim=True), d - c, xc)
            bias = _bias(module)
            if bias is not None:
                y = y + bias.to(compute)
        return y.to(out_dtype)


def _laid_out(x: Tensor) -> Tensor:
    """``x``, a view of the input with one channel (its batch and channel strides equal), as a
    computed tensor while compiling: Inductor cannot order such strides under dynamic shapes
    and fails ("cannot determine truth value of Relational", torch 2.13;
    https://github.com/pytorch/pytorch/issues/185510), where the product by one, a pointwise
    op, gets a layout of its own. Eager and other channel counts keep the view."""
    if x.shape[1] == 1 and torch.compiler.is_compiling():
        return x * 1
    return x


def _bias(module: nn.Module) -> Tensor | None:
    bias = module.bias
    assert bias is None or isinstance(bias, Tensor)
    return bias


def _as(sign: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if sign is None else sign.to(dtype)


def _conv(
    conv: nn.modules.conv._ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int
) -> Tensor:
    """The conv's own computation (``_conv_forward``) with another weight and group count."""
    function = _CONV[_conv_class_of(conv)]
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv_padding_for_mode(conv), mode=conv.padding_mode)
        return function(x, weight, bias, conv.stride, 0, conv.dilation, groups)
    return function(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


def _conv_class_of(conv: nn.Module) -> type[nn.Module]:
    found = _conv_class(conv)
    assert found is not None
    return found


def _conv_class(module: nn.Module) -> type[nn.Module] | None:
    return next((c for c in _CONV if isinstance(module, c)), None)


# --- the forward installed on a tied layer ----------------------------------------------------


def _tied_forward(self: nn.Module, input: Tensor) -> Tensor:
    """The forward of a layer with a fast path: the plan on the weight's tie, or, when it has
    none (``fast_forward(..., enable=False)`` on a copy, the tie removed while another tensor
    stays tied), the layer's own forward."""
    # Read directly, not through _tie_of's checks: this runs on every call, and a plan that
    # declines (a batch where it would lose) must cost next to nothing over the layer's own.
    lists = getattr(self, "parametrizations", None)
    param = lists["weight"][0] if lists is not None and "weight" in lists else None
    plan = param.fast if isinstance(param, TieParametrization) else None
    if plan is None or not _fits(self, input) or plan.declines(input):
        return original_class(self).forward(self, input)
    assert isinstance(param, TieParametrization)
    theta = param.free_vector(parametrization_list(self, "weight").original)
    return plan.run(self, theta, input)


def _fits(module: nn.Module, x: Tensor) -> bool:
    """Whether ``x`` has the features (channels) the layer takes. A plan would not always notice
    (an FFT pads or cuts its input, ``a * x + b * sum(x)`` takes any size): an input that does
    not fit goes to the layer's own forward, whose error is the one to raise."""
    if isinstance(module, nn.Linear):
        return x.dim() >= 1 and x.shape[-1] == module.in_features
    assert isinstance(module, nn.modules.conv._ConvNd)
    spatial = len(module.kernel_size)
    return x.dim() > spatial and x.shape[-spatial - 1] == module.in_channels


# --- detection ---------------------------------------------------------------------------------


def _maps_of(param: TieParametrization) -> tuple[Tensor, Tensor]:
    """The weight's flat index and sign (+1 where the layout has no signs), on the CPU."""
    index, sign = param.layout.part(param.offset, param.shape)
    return index, torch.ones_like(index) if sign is None else sign.to(torch.long)


def _maybe_sign(sign: Tensor) -> Tensor | None:
    return None if bool((sign == 1).all()) else sign.to(torch.float64)


def _column_classes(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Classes of identical rows of ``codes`` (columns, entries) by first appearance: returns
    ``(ids, representatives)``. Rows are hashed (int64 wrap-around), then checked exactly."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randint(1, 2**62, (codes.shape[1],), generator=generator)
    hashes = (codes * weights).sum(1)
    _, inverse = torch.unique(hashes, return_inverse=True)
    if not torch.equal(codes, codes[_first_of(inverse)[inverse]]):  # a hash collision
        _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    first = _first_of(inverse)
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank[inverse], first[order]


def _first_of(inverse: Tensor) -> Tensor:
    """For each class of ``inverse``, the first position holding it."""
    count = int(inverse.max()) + 1 if inverse.numel() else 0
    positions = torch.arange(inverse.numel())
    first = torch.full((count,), inverse.numel(), dtype=torch.long)
    return first.scatter_reduce(0, inverse, positions, "amin")


def _segments(codes: Tensor) -> tuple[_Segments, Tensor, Tensor] | str:
    """Classes of the columns (axis 1) of a weight's ``(rows, columns, rest)`` class codes."""
    rows, columns, rest = codes.shape
    ids, reps = _column_classes(codes.permute(1, 0, 2).reshape(columns, rows * rest))
    classes = len(reps)
    if classes > SEGMENT_MAX_SHARE * columns:
        return f"{classes} classes of identical input columns out of {columns} (needs <= half)"
    arange = torch.arange(columns)
    if classes == 1:
        kind = "all"
    elif columns % classes == 0 and torch.equal(ids, arange // (columns // classes)):
        kind = "blocks"
    elif columns % classes == 0 and torch.equal(ids, arange % classes):
        kind = "strided"
    else:
        kind = "general"
    return _Segments(kind, classes, columns), ids, reps


def _blocks_equal(maps: Tensor, blocks: int) -> bool:
    view = maps.view(blocks, -1)
    return bool((view == view[:1]).all())


def _plan_conv(module: nn.modules.conv._ConvNd, param: TieParametrization) -> FastPlan | str:
    index, sign = _maps_of(param)
    codes = class_codes(index, sign)
    out, per_group, *kernel = param.shape
    groups = module.groups
    fold = groups if groups > 1 and _blocks_equal(codes, groups) else 1
    rows = out // fold
    index = index.view(out, per_group, -1)[:rows]
    sign = sign.view(out, per_group, -1)[:rows]
    found = _segments(codes.view(out, per_group, -1)[:rows])
    if isinstance(found, str) and fold == 1:
        why = "" if groups == 1 else "; its groups hold different filters"
        return f"{found}{why}"
    segments, ids = (None, None) if isinstance(found, str) else found[:2]
    if not isinstance(found, str):
        index, sign = index[:, found[2]], sign[:, found[2]]
        runs = groups // fold  # the groups the reduced conv still has: their classes kept apart
        assert ids is not None
        ids = (torch.arange(runs)[:, None] * found[0].classes + ids[None, :]).reshape(-1)
    bias_in_conv = fold > 1 and _bias_folds(module, fold)
    shape = (rows, index.shape[1], *kernel)
    cpu = _Maps(index.reshape(-1).contiguous(), _maybe_sign(sign.reshape(shape)), ids)
    return _ReducedPlan(cpu, cpu, shape, segments, fold, bias_in_conv)


def _plan_linear(module: nn.Linear, param: TieParametrization) -> FastPlan | str:
    out, features = param.shape
    index, sign = _maps_of(param)
    index, sign = index.view(out, features), sign.view(out, features)
    codes = class_codes(index, sign)  # built once, read by every rule
    reasons = []
    for plan in (_diagonal(index, sign, codes), _spectral(index, sign, codes)):
        if isinstance(plan, FastPlan):
            return plan
        if plan:
            reasons.append(plan)
    found = _segments(codes.unsqueeze(-1))
    if isinstance(found, str):
        return "; ".join([*reasons, found])
    segments, ids, reps = found
    shape = (out, segments.classes)
    cpu = _Maps(index[:, reps].reshape(-1).contiguous(), _maybe_sign(sign[:, reps]), ids)
    return _ReducedPlan(cpu, cpu, shape, segments, 1, False)


def _diagonal(index: Tensor, sign: Tensor, codes: Tensor) -> FastPlan | str:
    n = index.shape[0]
    if n != index.shape[1] or n < 2:
        return ""
    diagonal = torch.eye(n, dtype=torch.bool)
    d, c = codes[0, 0], codes[0, 1]
    if not (bool((codes[diagonal] == d).all()) and bool((codes[~diagonal] == c).all())):
        return ""
    if n < DIAGONAL_MIN_SIZE:
        return f"diagonal plus constant, but n={n} < {DIAGONAL_MIN_SIZE}: the dense product wins"
    # the diagonal's and the off-diagonal's parameter (a copy: not a view pinning the index)
    cpu = _Maps(index[0, :2].clone(), sign[0, :2].to(torch.float64))
    return _DiagonalPlan(cpu, cpu, n)


def _spectral(index: Tensor, sign: Tensor, codes: Tensor) -> FastPlan | str:
    out, features = index.shape
    if out > 1 and features > 1 and torch.equal(codes[1:, 1:], codes[:-1, :-1]):
        kind = "toeplitz"
    elif out > 1 and features > 1 and torch.equal(codes[1:, :-1], codes[:-1, 1:]):
        kind = "hankel"
    else:
        return ""
    if kind == "toeplitz" and out == features and _is_circulant(codes):
        kind, length = "circulant", out
    else:
        length = _fast_length(out + features - 1)
    if min(out, features) < SPECTRAL_MIN_SIZE[kind]:
        return (
            f"{kind}, but min(out, in)={min(out, features)} < {SPECTRAL_MIN_SIZE[kind]}: the FFT "
            "loses to the dense product there"
        )
    # Toeplitz: a[k] = W[k, 0] for k < out, a[length - j] = W[0, j] for 0 < j < in, zeros
    # between. Hankel: a[i + j] = W[i, j], read off the first column and the last row.
    positions_index = torch.zeros(length, dtype=torch.long)
    positions_sign = torch.zeros(length, dtype=torch.long)
    positions_index[:out] = index[:, 0]
    positions_sign[:out] = sign[:, 0]
    if kind == "toeplitz":
        positions_index[length - features + 1 :] = index[0, 1:].flip(0)
        positions_sign[length - features + 1 :] = sign[0, 1:].flip(0)
    elif kind == "hankel":
        positions_index[out : out + features - 1] = index[-1, 1:]
        positions_sign[out : out + features - 1] = sign[-1, 1:]
    cpu = _Maps(positions_index, positions_sign.to(torch.float64))
    return _SpectralPlan(cpu, cpu, kind, out, length)


def _is_circulant(codes: Tensor) -> bool:
    n = codes.shape[0]
    i = torch.arange(n)
    return torch.equal(codes, codes[(i[:, None] - i[None, :]) % n, 0])


def _fast_length(n: int) -> int:
    """The smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (a fast FFT size)."""
    m = max(n, 1)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def _described_plan(module: nn.Module, param: TieParametrization) -> FastPlan | None:
    """The plan of a weight whose layout is a broadcast description, read off the description
    (no index over the whole weight is built: ``ShareAlong(1)`` on a ``Linear(16384, 16384)``
    would need 2 GiB of it), or None: detect from the index.

    ``ShareAlong`` with dim 1 among its dims and not dim 0 is ``segment-sum`` with one class;
    ``ShareAcrossGroups(module.groups)`` on a conv's dim 0 is ``fold-groups``. The reduced
    weight reads the free vector through the small index of the description's kept dims."""
    layout = param.layout
    broadcast = layout._broadcast_of()
    if broadcast is None or param.offset != 0 or param.view is None or param.n_free == 0:
        return None
    full, dims = broadcast
    reshaped = layout._reshaped_to()
    out, columns, *kernel = param.shape
    theta_index = torch.arange(param.n_free)
    if reshaped is None and 1 in dims and 0 not in dims:
        # the weight with one input column: the free vector broadcast along the other dims
        reduced = param.view.apply(theta_index)[:, :1]
        cpu = _Maps(reduced.reshape(-1).contiguous())
        segments = _Segments("all", 1, columns)
        in_order = torch.equal(cpu.index, theta_index)  # not where kernel dims are shared too
        return _ReducedPlan(cpu, cpu, tuple(reduced.shape), segments, 1, False, in_order)
    groups = getattr(module, "groups", 1)
    if reshaped is not None and dims == (0,) and full[0] == groups > 1:  # ShareAcrossGroups
        if isinstance(module, nn.Linear):
            return None
        cpu = _Maps(theta_index)
        shape = (out // groups, columns, *kernel)
        return _ReducedPlan(cpu, cpu, shape, None, groups, _bias_folds(module, groups), True)
    return None


def _bias_folds(module: nn.Module, fold: int) -> bool:
    """Whether ``module``'s bias is tied alone and equal in every one of ``fold`` blocks, so the
    folded conv can add it."""
    bias_param = None if module.bias is None else lone_tie(module, "bias")
    if bias_param is None:
        return False
    return _blocks_equal(class_codes(*_maps_of(bias_param)), fold)


def _plan(module: nn.Module) -> FastPlan | str:
    """A plan for ``module``'s forward, or why it keeps the gathered one."""
    base = original_class(module)
    param = _tie_of(module, "weight")
    if param is None:
        return "its weight is not tied"
    if len(parametrization_list(module, "weight")) != 1:
        return "its weight has other parametrizations on top of the tie"
    stock = base.forward in (nn.Linear.forward, *(c.forward for c in _CONV))
    described = _described_plan(module, param) if stock else None
    if described is not None:
        return described
    if isinstance(module, nn.Linear) and base.forward is nn.Linear.forward:
        return _plan_linear(module, param)
    conv = _conv_class(module)
    if conv is not None and base.forward is conv.forward:
        assert isinstance(module, nn.modules.conv._ConvNd)
        return _plan_conv(module, param)
    if isinstance(module, (nn.Linear, *_CONV)):
        return f"{base.__name__} overrides forward(); only the stock forward is rewritten"
    return f"no fast rule for {base.__name__}"


# --- the public call ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FastPathRow:
    """One layer in a :class:`FastForwardReport`: where it is, its class, the rule (or, for a
    layer left alone, ``""``) and the detail (or the reason it was left alone)."""

    module: str
    layer: str
    rule: str
    detail: str


@dataclass(frozen=True)
class FastForwardReport:
    """What :func:`fast_forward` did: ``changed`` (the layers whose forward it set or removed)
    and, with ``explain=True``, ``left_alone`` (every other tied layer, with the reason)."""

    enabled: bool
    changed: tuple[FastPathRow, ...]
    left_alone: tuple[FastPathRow, ...] = ()

    def __len__(self) -> int:
        return len(self.changed)

    def __iter__(self) -> Iterator[FastPathRow]:
        return iter(self.changed)

    def __str__(self) -> str:
        verb = "fast path on" if self.enabled else "fast path removed from"
        lines = [f"{verb} {len(self.changed)} layer(s)"]
        lines += [
            f"  {r.module or '(model)'} ({r.layer}): {r.rule}: {r.detail}" for r in self.changed
        ]
        if self.left_alone:
            lines.append(f"left alone: {len(self.left_alone)} tied layer(s)")
            lines += [f"  {r.module or '(model)'} ({r.layer}): {r.detail}" for r in self.left_alone]
        return "\n".join(lines)

    __repr__ = __str__


def rule_of(module: nn.Module) -> str | None:
    """The fast-path rule ``module`` runs, or None."""
    param = _tie_of(module, "weight")
    plan = None if param is None else param.fast
    return None if plan is None else plan.name


def fast_forward(
    model: nn.Module, enable: bool = True, *, explain: bool = False
) -> FastForwardReport:
    """Give every tied layer of ``model`` whose layout allows a cheaper computation a forward
    that uses it; returns what changed, per layer, with the rule used.

    Outputs and gradients are those of the gathered forward (up to rounding); ``module.weight``,
    ``parameters()`` and state dicts are unchanged. ``enable=False`` removes every fast path;
    ``remove_tie``/``bake`` restore a plain layer. ``explain=True`` also lists each other tied
    layer with the reason it keeps the gathered forward.

    >>> import torch, tietorch
    >>> conv = torch.nn.Conv2d(64, 16, 3)
    >>> _ = tietorch.register_tie(conv, "weight", tietorch.ShareAlong(1))
    >>> x = torch.randn(2, 64, 8, 8)
    >>> before = conv(x)
    >>> print(tietorch.fast_forward(conv))
    fast path on 1 layer(s)
      (model) (Conv2d): segment-sum: 64 input columns summed into 1 (all)
    >>> torch.allclose(conv(x), before, atol=1e-5)
    True
    """
    if not isinstance(model, nn.Module):
        raise TieTypeError(f"fast_forward: expected an nn.Module, got {type(model).__name__}")
    changed: list[FastPathRow] = []
    left_alone: list[FastPathRow] = []
    tied = [
        (qualname, module)
        for qualname, module in model.named_modules()
        if parametrize.is_parametrized(module)
        and any(_tie_of(module, name) is not None for name in parametrization_lists(module))
    ]
    if not enable:
        for qualname, module in tied:
            param = _tie_of(module, "weight")
            if param is not None and param.fast is not None:
                row = FastPathRow(qualname, original_class(module).__name__, param.fast.name, "")
                changed.append(row)
        for _, module in tied:
            _disable(module)
        return FastForwardReport(False, tuple(changed))
    plans: list[tuple[nn.Module, TieParametrization, FastPlan]] = []
    for qualname, module in tied:  # every plan first, then install: nothing fails half-way
        found = _plan(module)
        layer = original_class(module).__name__
        if isinstance(found, str):
            left_alone.append(FastPathRow(qualname, layer, "", found))
            continue
        param = _tie_of(module, "weight")
        assert param is not None
        plans.append((module, param, found))
        changed.append(FastPathRow(qualname, layer, found.name, found.detail))
    for module, param, plan in plans:
        param.fast = plan.placed(param.device, param._dtype)
        if not has_class_member(module, "forward"):
            set_class_member(module, "forward", _tied_forward)
    return FastForwardReport(True, tuple(changed), tuple(left_alone) if explain else ())


def _disable(module: nn.Module) -> None:
    param = _tie_of(module, "weight")
    if param is not None:
        param.fast = None
    del_class_member(module, "forward")

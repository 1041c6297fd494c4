"""The solved form of a tie, ``W = theta[index] * sign``, and all the math on it.

Everything that reads a layout's classes lives here, written once: the gather (``materialize``),
the class statistics and the orthogonal projection (``project``), the class sizes, the rules of
a well-formed layout, and the initial value of a free vector (``init=``). A group of tensors
tied together (:func:`tietorch.tie_tensors`) is one layout over their concatenated flat index
space; each tensor reads the slice at its offset.

Precision: class means are accumulated in float64 (float32 where the device has no float64, as
on Apple's MPS), never in the weight's own low-precision dtype, and cast to it once. A class
whose signed entries are all equal takes that value exactly, so a tensor that already satisfies
its tie is returned bit for bit (up to the sign of zero) and its projection error is exactly 0.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import torch
from torch import Tensor

from .errors import DeclarationError, ShapeError, TieTypeError

__all__ = ["TieLayout"]

Shape = tuple[int, ...]
Init = Literal["project", "preserve_std"]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def on_cpu(solve: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``solve`` with the CPU as default device: layouts are solved there whatever the
    ambient default (``with torch.device("meta")`` or ``torch.set_default_device``, as
    transformers and accelerate build models), where index grids would otherwise be made."""

    @functools.wraps(solve)
    def solved(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with torch.device("cpu"):
            return solve(*args, **kwargs)

    return solved


def gather(theta: Tensor, index: Tensor, sign: Tensor | None, shape: Shape) -> Tensor:
    """``theta[index] * sign`` viewed as ``shape`` (``index`` flat).

    ``index_select`` is the fastest gather forward and backward on CPU (against advanced
    indexing ``theta[index]`` and ``torch.gather``, measured on torch 2.x).
    """
    if theta.numel() == 0:  # every entry forced to zero
        return theta.new_zeros(shape) + theta.sum()  # keeps the result attached to autograd
    out = theta.index_select(0, index).view(shape)
    return out if sign is None else out * sign


def class_codes(index: Tensor, sign: Tensor | None) -> Tensor:
    """One integer per entry, equal exactly where ``(index, sign)`` are (signs are -1, 0 or
    +1): what comparing two parts of a layout compares."""
    return index if sign is None else index * 3 + (sign.to(torch.int64) + 1)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype class statistics are accumulated in: float64, or float32 on a device that has
    no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def signed_class_means(
    index: Tensor, sign: Tensor | None, values: Tensor, n_free: int
) -> tuple[Tensor, Tensor]:
    """Per class, the mean of ``sign * values`` over the entries given, precision-safe.

    ``index`` (flat, long) and ``sign`` (flat, None for all +1) describe the entries of
    ``values`` (any shape, flattened). Returns ``(theta, covered)`` in the accumulation dtype:
    ``covered[c]`` says whether class ``c`` has an entry here (``theta[c]`` is 0 otherwise). A
    class whose signed entries are all equal gets that value exactly; the others get the mean,
    summed in float64 (scaled by a power of two when float64 itself could overflow).
    """
    dtype = accumulation_dtype(values.device)
    flat = values.reshape(-1).to(dtype)
    if sign is not None:
        live = sign.reshape(-1) != 0
        flat = (flat * sign.reshape(-1).to(dtype))[live]
        index = index[live]
    counts = torch.bincount(index, minlength=n_free)
    covered = counts > 0
    if n_free == 0:
        return flat.new_zeros(0), covered
    low = flat.new_full((n_free,), math.inf).scatter_reduce_(0, index, flat, "amin")
    high = flat.new_full((n_free,), -math.inf).scatter_reduce_(0, index, flat, "amax")
    scale = _overflow_scale(flat, int(counts.max()) if flat.numel() else 0)
    total = flat.new_zeros(n_free).index_add_(0, index, flat * scale if scale != 1 else flat)
    mean = total / counts.clamp_min(1).to(dtype)
    if scale != 1:
        mean = mean / scale
    theta = torch.where(low == high, low, mean)
    return torch.where(covered, theta, torch.zeros_like(theta)), covered


def _overflow_scale(values: Tensor, most: int) -> float:
    """1, or the power of two to scale ``values`` by before summing ``most`` of them, where the
    sum could overflow their (accumulation) dtype; dividing by it afterwards is exact."""
    if values.numel() == 0 or most == 0:
        return 1.0
    largest = float(values.abs().max())
    if math.isfinite(largest) and largest * most > torch.finfo(values.dtype).max / 2:
        return 2.0 ** -math.ceil(math.log2(most) + 1)
    return 1.0


def relative_error(original: Tensor, projected: Tensor) -> float:
    """``||W - P(W)|| / ||W||`` in float64 (0 for a zero tensor; exactly 0 when equal).

    Both are scaled by ``max |W|`` first, so tensors near their dtype's maximum do not overflow
    the norms.
    """
    dtype = accumulation_dtype(original.device)
    a = original.detach().reshape(-1).to(dtype)
    b = projected.detach().reshape(-1).to(a.device, dtype)
    if a.numel() == 0:
        return 0.0
    largest = float(a.abs().max())
    if largest == 0 or not math.isfinite(largest):
        return 0.0 if torch.equal(a, b) else float(torch.linalg.vector_norm(a - b))
    norm = float(torch.linalg.vector_norm(a / largest))
    return float(torch.linalg.vector_norm(a / largest - b / largest)) / norm


@dataclass(frozen=True)
class ViewRecipe:
    """A tensor that reads its whole free vector in some order of its axes, possibly broadcast
    along some of them: ``theta.view(compact).permute(order)``, then ``unsqueeze`` + ``expand``
    along the ``broadcast`` dims (stride 0).

    The identity (an embedding and its output layer) is a plain view: no index is read, no copy
    made, and the backward is a reshape instead of a scatter. A permutation of axes (a decoder =
    its encoder transposed) is made contiguous (a layer given a transposed weight would sum in
    another order than with the gathered one, and its output would differ in the last bits),
    which still replaces the gather and its scatter by a transpose.

    A broadcast (``ShareAlong``: one value along whole dims) is an expanded view: the forward
    holds no copy and equals the gather bit for bit; the backward sums the gradient over the
    broadcast dims (a reduction, in another order than the gather's scatter-add: equal up to
    rounding). Its classes are the entries that differ only in the broadcast dims, so assigning
    a tensor takes their mean over those dims (:meth:`invert`). An expanded tensor refuses
    in-place writes inside torch ("more than one element of the written-to tensor refers to a
    single memory location"), where a write into a gathered weight was lost without a word.

    An overlapping window (``Hankel``: ``W[i, j] = theta[i + j]``, strides ``(1, 1)``) is
    ``theta.view(compact)`` with sliding windows taken (``unfold(dim, size, 1)``: two dims read
    one compact dim, at the sum of their indices), then permuted and made contiguous as a
    permutation is: no index is kept or read. ``unfold`` rather than ``as_strided``: the
    backward of an overlapping ``as_strided`` builds an index for the step and was 6x slower
    than ``unfold``'s, 2x slower than the gather (2048 x 2048 Hankel, fwd+bwd, torch 2.13 CPU:
    unfold 3 ms, gather 6-7 ms, as_strided 17 ms).
    """

    compact: Shape  # theta viewed with these sizes: the kept dims, in memory order
    order: tuple[int, ...]  # permute(order) puts them in the tensor's order (of the kept dims)
    # Dims of the tensor (sorted) along which it is constant, and the tensor's full shape;
    # () / () for no broadcast (the class-level defaults keep recipes pickled before loadable).
    broadcast: tuple[int, ...] = ()
    shape: Shape = ()
    # The tensor's shape where it differs from ``shape`` (the same entries in row-major order:
    # ``ShareAcrossGroups`` splits one dim into groups x block and broadcasts along the groups),
    # reached by a reshape, which copies the repeated blocks; () for none.
    final: Shape = ()
    # The windows of an overlapping read, ``(compact dim, size)`` for ``unfold(dim, size, 1)``
    # in turn (each appends its window dim); ``order`` then permutes the dims of size > 1 of
    # ``shape`` out of the unfolded tensor. () for none.
    window: tuple[tuple[int, int], ...] = ()

    def invert(self, tensor: Tensor) -> Tensor:
        """The free vector a tensor of this shape reads (a new contiguous 1-d tensor): ``apply``
        undone; for a broadcast, the mean over the broadcast dims (accumulated in float64, cast
        once to the tensor's dtype; exact when the tensor is constant along them)."""
        if self.window:  # classes of different sizes: the class means, as a gather's
            n_free = math.prod(self.compact)
            index = self.apply(torch.arange(n_free, device=tensor.device))
            means = signed_class_means(index.reshape(-1), None, tensor, n_free)[0]
            return means.to(tensor.dtype)
        if self.final:
            tensor = tensor.reshape(self.shape)
        if self.broadcast:
            tensor = _mean_over(tensor, self.broadcast).to(tensor.dtype)
        inverse = tuple(sorted(range(len(self.order)), key=lambda k: self.order[k]))
        return tensor.permute(inverse).clone(memory_format=torch.contiguous_format).view(-1)

    def apply(self, theta: Tensor) -> Tensor:
        """The tensor, from the 1-d free vector ``theta``."""
        out = theta.view(self.compact)
        if self.window:
            for dim, size in self.window:
                out = out.unfold(dim, size, 1)
            return out.permute(self.order).contiguous().view(self.shape)
        if self.order != tuple(range(len(self.order))):
            out = out.permute(self.order).contiguous()
        if not self.broadcast:
            return out
        for d in self.broadcast:  # sorted: each lands at its place in the full shape
            out = out.unsqueeze(d)
        out = out.expand(self.shape)
        return out.reshape(self.final) if self.final else out


def _mean_over(tensor: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The mean of ``tensor`` over ``dims``, in the accumulation dtype, as
    :func:`signed_class_means` takes it: exactly the common value where all entries averaged
    are equal, else the float64 mean (scaled by a power of two where it could overflow)."""
    values = tensor.detach().to(accumulation_dtype(tensor.device))
    count = math.prod(tensor.shape[d] for d in dims)
    low, high = values.amin(dims), values.amax(dims)
    scale = _overflow_scale(values, count)
    mean = (values * scale if scale != 1 else values).sum(dims) / count
    if scale != 1:
        mean = mean / scale
    return torch.where(low == high, low, mean)


def view_recipe(index: Tensor, sign: Tensor | None, shape: Shape, n_free: int) -> ViewRecipe | None:
    """The :class:`ViewRecipe` of a tensor whose flat ``index`` (and ``sign``) over ``shape``
    is a strided read of the free vector ``0 .. n_free``, or None (a gather).

    It is one exactly when every sign is +1, every free parameter is read and ``index[x] =
    sum_d x_d * stride_d`` for some strides >= 0 (checked against the index entry by entry, in
    one pass; the layout itself is not changed). Strides of a contiguous tensor whose dims are
    a permutation of the dims with a stride give a permuted view, broadcast along the dims of
    stride 0; any other strides an overlapping window.
    """
    numel = math.prod(shape)
    if numel == 0 or n_free == 0 or (sign is not None and not bool((sign == 1).all())):
        return None
    grid = index.reshape(shape)
    if int(grid[(0,) * len(shape)]) != 0:
        return None
    strides = [
        int(grid[tuple(1 if k == d else 0 for k in range(len(shape)))]) if size > 1 else 0
        for d, size in enumerate(shape)
    ]
    if min(strides) < 0 or sum((s - 1) * t for s, t in zip(shape, strides)) != n_free - 1:
        return None  # not a read of exactly 0 .. n_free - 1 (the last entry reads the largest)
    # on the index's device (the CPU), even under a torch.device("meta") context
    built = torch.zeros((), dtype=torch.long, device=index.device)
    for d, size in enumerate(shape):
        axis = torch.arange(size, device=index.device)
        built = built + axis.view([size if k == d else 1 for k in range(len(shape))]) * strides[d]
    if not torch.equal(built.expand(shape), grid):
        return None
    broadcast = tuple(d for d, size in enumerate(shape) if size > 1 and strides[d] == 0)
    kept = [d for d in range(len(shape)) if d not in broadcast]
    order_in_memory = sorted(kept, key=lambda d: -strides[d])
    expected = 1
    for d in reversed(order_in_memory):  # contiguous in this order?
        if shape[d] > 1 and strides[d] != expected:
            return None if broadcast else _window_recipe(shape, strides)
        expected *= shape[d]
    order = tuple(order_in_memory.index(d) for d in kept)  # compact dim of each kept dim
    compact = tuple(shape[d] for d in order_in_memory)
    return ViewRecipe(compact, order, broadcast, tuple(shape) if broadcast else ())


def _window_recipe(shape: Shape, strides: Sequence[int]) -> ViewRecipe | None:
    """The windowed :class:`ViewRecipe` of a strided read whose dims of size > 1 share strides
    at most two at a time (a Hankel pair), the strides of a contiguous compact tensor with one
    dim per stride (a pair's dim spans ``m + n - 1``), or None."""
    dims = [d for d, size in enumerate(shape) if size > 1]
    by_stride: dict[int, list[int]] = {}
    for d in dims:
        by_stride.setdefault(strides[d], []).append(d)
    groups = sorted(by_stride.items(), reverse=True)  # compact dims, outermost first
    extents = [sum(shape[d] for d in members) - len(members) + 1 for _, members in groups]
    expected = 1
    for (stride, members), extent in zip(reversed(groups), reversed(extents)):
        if len(members) > 2 or stride != expected:
            return None
        expected *= extent
    # unfold(k, n, 1) leaves the pair's first dim at compact dim k and appends its second
    position = {members[0]: k for k, (_, members) in enumerate(groups)}
    window: list[tuple[int, int]] = []
    for k, (_, members) in enumerate(groups):
        if len(members) == 2:
            position[members[1]] = len(groups) + len(window)
            window.append((k, shape[members[1]]))
    order = tuple(position[d] for d in dims)
    return ViewRecipe(tuple(extents), order, (), tuple(shape), (), tuple(window))


class TieLayout:
    """The solved form of a tie on one shape: ``W = theta[index] * sign``.

    Args:
        index: integer tensor with the weight's shape; ``index[x]`` is the free parameter that
            entry ``x`` reads, in ``[0, n_free)``.
        n_free: the number of free parameters (the length of ``theta``).
        sign: None (all +1) or a tensor of the same shape holding +1, -1 or 0 (0: the entry is
            forced to zero; its ``index`` is then ignored and may be 0 even when ``n_free == 0``).

    A hand-written, closed-form layout (see :meth:`Tie.layout`) is built with this constructor,
    which checks that it is well formed. Layouts are immutable and live on the CPU.

    Example:
        >>> layout = TieLayout(index=torch.tensor([[0, 1], [1, 2]]), n_free=3)
        >>> layout.materialize(torch.tensor([1.0, 2.0, 3.0]))
        tensor([[1., 2.],
                [2., 3.]])
        >>> layout.project(torch.tensor([[1.0, 0.0], [4.0, 3.0]]))
        tensor([1., 2., 3.])
    """

    __slots__ = (
        "_broadcast",
        "_copies",
        "_counts",
        "_fingerprint",
        "_index",
        "_n_free",
        "_reshaped",
        "_sign",
    )

    def __init__(self, index: Tensor, n_free: int, sign: Tensor | None = None) -> None:
        # The rules of a well-formed layout; every violation is raised from here.
        index = torch.as_tensor(index, device="cpu")
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TieTypeError(f"TieLayout: index must be an integer tensor, got {index.dtype}")
        index = index.to(torch.long)
        n_free = _as_count(n_free, "TieLayout: n_free")
        live: Tensor | None = None
        if sign is not None:
            sign = torch.as_tensor(sign, device="cpu")
            if sign.shape != index.shape:
                raise ShapeError(
                    f"TieLayout: sign has shape {tuple(sign.shape)}, index has {tuple(index.shape)}"
                )
            if sign.is_complex():
                raise TieTypeError(f"TieLayout: sign must be real, got {sign.dtype}")
            if sign.numel() and not bool(((sign == 1) | (sign == -1) | (sign == 0)).all()):
                raise DeclarationError("TieLayout: sign values must be +1, -1 or 0")
            sign = sign.to(torch.int8)
            live = sign != 0
            index = index.masked_fill(~live, 0)  # forced zeros read parameter 0, times 0
        used = index.reshape(-1) if live is None else index[live]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= n_free):
            raise DeclarationError(
                f"TieLayout: index values must lie in [0, n_free={n_free}), got "
                f"[{int(used.min())}, {int(used.max())}]"
            )
        counts = torch.bincount(used, minlength=n_free)
        if n_free and not bool((counts > 0).all()):
            unused = torch.nonzero(counts == 0).reshape(-1)[:5].tolist()
            raise DeclarationError(
                f"TieLayout: every free parameter must be used by some entry; unused: {unused}"
            )
        self._index: Tensor | None = index
        self._n_free = n_free
        self._sign = sign
        self._counts: Tensor | None = counts
        self._fingerprint: str | None = None
        self._copies = 0
        self._broadcast: tuple[Shape, tuple[int, ...]] | None = None
        self._reshaped: Shape | None = None

    @classmethod
    def copies(cls, n_free: int, copies: int) -> TieLayout:
        """``copies`` tensors of ``n_free`` entries each, equal entry by entry (an embedding and
        its output layer): entry ``j`` of every copy is class ``j``. Held as this description,
        so it costs nothing at any size: each copy reads the free vector as a view, and the
        index is built only for whoever asks for it.

        >>> layout = TieLayout.copies(3, 2)
        >>> layout.index.tolist(), layout.class_sizes.tolist()
        ([0, 1, 2, 0, 1, 2], [2, 2, 2])
        """
        layout = cls.__new__(cls)
        layout._index = layout._sign = layout._counts = layout._fingerprint = None
        layout._n_free = _as_count(n_free, "TieLayout.copies: n_free")
        layout._copies = _as_count(copies, "TieLayout.copies: copies")
        layout._broadcast = layout._reshaped = None
        return layout

    @classmethod
    def broadcast(
        cls, shape: Sequence[int], dims: Sequence[int], reshaped: Sequence[int] | None = None
    ) -> TieLayout:
        """A tensor of ``shape`` constant along ``dims`` (``ShareAlong(dims)``): its classes are
        the entries that differ only in those dims, numbered in row-major order of the other
        dims (as the solver numbers them: by each class's first entry). Held as this
        description, so it costs nothing at any size: the tensor reads the free vector as an
        expanded view, and the index is built only for whoever asks for it.

        ``reshaped``: the tied tensor's shape, where it is ``shape`` reshaped (the same entries
        in row-major order). ``ShareAcrossGroups(g)`` on ``(C, k)`` is the broadcast of
        ``(g, C // g, k)`` along dim 0, reshaped to ``(C, k)``: the blocks are repeated (a
        copy, as the reshape of an expanded tensor is) and no index is read.

        >>> layout = TieLayout.broadcast((2, 3), (1,))
        >>> layout.n_free, layout.index.tolist(), layout.class_sizes.tolist()
        (2, [[0, 0, 0], [1, 1, 1]], [3, 3])
        >>> TieLayout.broadcast((2, 2), (0,), reshaped=(4,)).index.tolist()
        [0, 1, 0, 1]
        """
        shape = tuple(_as_count(s, "TieLayout.broadcast: shape") for s in shape)
        ndim = len(shape)
        resolved = set()
        for d in dims:
            d = operator.index(d)
            if not -ndim <= d < ndim:
                raise ShapeError(f"TieLayout.broadcast: dim {d} out of range for shape {shape}")
            resolved.add(d % ndim)
        broadcast = tuple(sorted(resolved))
        layout = cls.__new__(cls)
        layout._index = layout._sign = layout._counts = layout._fingerprint = None
        layout._copies = 0
        layout._broadcast = (shape, broadcast)
        layout._reshaped = None
        if reshaped is not None:
            final = tuple(_as_count(s, "TieLayout.broadcast: reshaped") for s in reshaped)
            if math.prod(final) != math.prod(shape):
                raise ShapeError(
                    f"TieLayout.broadcast: cannot reshape {shape} to {final} (sizes differ)"
                )
            layout._reshaped = final if final != shape else None
        layout._n_free = math.prod(s for d, s in enumerate(shape) if d not in resolved)
        if math.prod(shape) == 0:
            layout._n_free = 0
        return layout

    @classmethod
    def repeated(cls, layout: TieLayout, leading: Sequence[int]) -> TieLayout:
        """``layout`` repeated independently for every index of ``leading`` dims put in front
        (a tie that acts on trailing dims only: each leading index has classes of its own).
        Numbered as the solver numbers them, by each class's first entry in row-major order:
        class ``c`` of repetition ``r`` is ``r * layout.n_free + c``; entries forced to zero
        keep index 0.

        >>> kernel = TieLayout(torch.tensor([0, 1, 0]), 2)
        >>> TieLayout.repeated(kernel, (2,)).index.tolist()
        [[0, 1, 0], [2, 3, 2]]
        """
        leading = tuple(_as_count(s, "TieLayout.repeated: leading") for s in leading)
        copies = math.prod(leading)
        base = torch.arange(copies, device="cpu").mul_(layout.n_free).view(copies, 1)
        index = (base + layout.index.reshape(1, -1)).view(*leading, *layout.shape)
        sign = None if layout.sign is None else layout.sign.expand(*leading, *layout.shape)
        return cls(index, copies * layout.n_free, sign)  # forced zeros read index 0 there

    def _broadcast_of(self) -> tuple[Shape, tuple[int, ...]] | None:
        """The shape and (sorted) broadcast dims of a :meth:`broadcast` layout, else None
        (layouts pickled before it existed have no such slot)."""
        return getattr(self, "_broadcast", None)

    def _reshaped_to(self) -> Shape | None:
        """The tensor's shape where a :meth:`broadcast` layout is reshaped to it, else None."""
        return getattr(self, "_reshaped", None)

    def _described(self) -> int:
        """How many copies a :meth:`copies` layout describes (0: a layout held as its index;
        layouts pickled before descriptions existed have no such slot)."""
        return getattr(self, "_copies", 0)

    # Read-only: the class sizes (and every parametrization built from them) must stay valid.
    @property
    def index(self) -> Tensor:
        """The free parameter each entry reads: an int64 tensor of the tensor's shape (built on
        first use for a layout held as a description)."""
        if self._index is None:
            broadcast = self._broadcast_of()
            if broadcast is not None:
                shape = self.shape
                recipe = self.view_of(0, shape)
                whole = torch.arange(self._n_free, device="cpu")
                self._index = whole.new_zeros(shape) if recipe is None else recipe.apply(whole)
                self._index = self._index.contiguous()
            else:
                self._index = torch.arange(self._n_free, device="cpu").repeat(self._described())
        return self._index

    @property
    def n_free(self) -> int:
        """The number of free parameters (the length of the free vector)."""
        return self._n_free

    @property
    def sign(self) -> Tensor | None:
        """The sign (``+1``/``-1``, or ``0`` for an entry forced to zero) each entry applies
        to its free parameter, of the tensor's shape; ``None`` when every sign is ``+1``."""
        return self._sign

    @property
    def shape(self) -> Shape:
        """The shape of the tied tensor."""
        broadcast = self._broadcast_of()
        if broadcast is not None:
            return self._reshaped_to() or broadcast[0]
        copies = self._described()
        return (self._n_free * copies,) if copies else tuple(self.index.shape)

    @property
    def numel(self) -> int:
        """The number of entries of the tied tensor."""
        return math.prod(self.shape)

    @property
    def class_sizes(self) -> Tensor:
        """How many entries read each free parameter (forced zeros not counted)."""
        if self._counts is None:
            broadcast = self._broadcast_of()
            size = self._described() if broadcast is None else _class_size(*broadcast)
            self._counts = torch.full((self._n_free,), size, dtype=torch.long)
        return self._counts

    def view_of(self, offset: int, shape: Shape) -> ViewRecipe | None:
        """The view a tensor at ``offset`` of ``shape`` reads the free vector as, or None (a
        gather): from the description where there is one, else checked on the index."""
        broadcast = self._broadcast_of()
        if broadcast is not None:
            full, dims = broadcast
            if offset != 0 or tuple(shape) != self.shape or self._n_free == 0:
                return None
            kept = tuple(s for d, s in enumerate(full) if d not in dims)
            return ViewRecipe(kept, tuple(range(len(kept))), dims, full, self._reshaped_to() or ())
        if self._described():
            whole = math.prod(shape) == self._n_free and offset % max(self._n_free, 1) == 0
            return ViewRecipe(tuple(shape), tuple(range(len(shape)))) if whole else None
        index, sign = self.part(offset, shape)
        return view_recipe(index, sign, shape, self._n_free)

    @property
    def n_zero(self) -> int:
        """How many entries are forced to zero."""
        return 0 if self.sign is None else int((self.sign == 0).sum())

    def part(self, offset: int, shape: Shape) -> tuple[Tensor, Tensor | None]:
        """Flat ``index`` and ``sign`` of the entries ``offset .. offset + prod(shape)`` (a
        tensor's slice of a group's index space)."""
        size = math.prod(shape)
        index = self.index.reshape(-1)[offset : offset + size]
        sign = None if self.sign is None else self.sign.reshape(-1)[offset : offset + size]
        return index, sign

    def materialize(self, theta: Tensor) -> Tensor:
        """The full tensor ``theta[index] * sign`` for a free vector ``theta`` of length n_free."""
        if theta.shape != (self.n_free,):
            raise ShapeError(
                f"expected a free vector of shape ({self.n_free},), got {tuple(theta.shape)}"
            )
        sign = None if self.sign is None else self.sign.to(theta.device, theta.dtype)
        return gather(theta, self.index.reshape(-1).to(theta.device), sign, self.shape)

    def project(self, weight: Tensor) -> Tensor:
        """The free vector of the orthogonal projection of ``weight`` onto the tied subspace.

        Each free parameter is the signed mean of its class (accumulated in float64, returned
        in ``weight``'s dtype); ``materialize(project(W))`` is the closest tensor to ``W`` (in
        the Frobenius norm) that satisfies the tie, and is ``W`` itself when ``W`` satisfies it.
        """
        if tuple(weight.shape) != self.shape:
            raise ShapeError(f"expected a tensor of shape {self.shape}, got {tuple(weight.shape)}")
        return self.project_parts([(0, weight)])[0].to(weight.dtype)

    def project_parts(self, parts: Sequence[tuple[int, Tensor]]) -> tuple[Tensor, Tensor]:
        """Class means over several tensors at once, each at its flat ``offset`` of this
        layout's index space (a group's dense checkpoint). Returns ``(theta, covered)`` in the
        accumulation dtype, as :func:`signed_class_means`."""
        device = parts[0][1].device
        broadcast = self._broadcast_of()
        if broadcast is not None and len(parts) == 1 and self.view_of(*_whole(parts[0])):
            full, dims = broadcast
            return _mean_over(parts[0][1].reshape(full), dims).reshape(-1), torch.ones(
                self._n_free, dtype=torch.bool, device=device
            )
        copies = self._described()
        if copies and all(
            off % max(self._n_free, 1) == 0 and t.numel() == self._n_free for off, t in parts
        ):
            return _mean_of_copies([t for _, t in parts], self._n_free)[0], torch.ones(
                self._n_free, dtype=torch.bool, device=device
            )
        indices, signs, values = [], [], []
        for offset, tensor in parts:
            index, sign = self.part(offset, tuple(tensor.shape))
            indices.append(index.to(device))
            signs.append(None if sign is None else sign.to(device))
            values.append(tensor.detach().reshape(-1))
        sign = None if self.sign is None else torch.cat([s for s in signs if s is not None])
        dtype = accumulation_dtype(device)
        flat = torch.cat([v.to(device, dtype) for v in values])
        return signed_class_means(torch.cat(indices), sign, flat, self.n_free)

    def initial_theta(self, tensor: Tensor, init: Init = "project") -> tuple[Tensor, float]:
        """The free vector a tie starts from, in ``tensor``'s dtype, and the relative projection
        error of ``tensor`` (``tensor`` covers this layout's whole index space).

        ``"project"``: the orthogonal projection. ``"preserve_std"``: that projection scaled by
        ``sqrt(class size)``, so i.i.d. entries of a fresh layer keep their standard deviation.

        A meta tensor has no values: the free vector is an uninitialized meta tensor (filled by
        ``to_empty()`` and ``load_state_dict`` or an initializer) and the error is ``nan``, not
        computed.
        """
        if tensor.is_meta:
            return torch.empty(self.n_free, dtype=tensor.dtype, device=tensor.device), math.nan
        with torch.no_grad():
            theta, _ = self.project_parts([(0, tensor)])
            recipe = self.view_of(0, tuple(tensor.shape)) if self._broadcast_of() else None
            if recipe is not None:  # described: no index
                projected = recipe.apply(theta.to(tensor.dtype))
            else:
                sign = None if self.sign is None else self.sign.to(theta.device, tensor.dtype)
                index = self.index.reshape(-1).to(theta.device)
                projected = gather(theta.to(tensor.dtype), index, sign, tuple(tensor.shape))
            error = relative_error(tensor, projected)
            if init == "preserve_std":
                theta = theta * self.class_sizes.to(theta).clamp_min(1).sqrt()
        return theta.to(tensor.dtype), error

    def initial_theta_of_copies(self, copies: Sequence[Tensor], init: Init) -> tuple[Tensor, float]:
        """:meth:`initial_theta` for a :meth:`copies` layout, from the copies themselves (never
        concatenated): their mean, and the relative distance of all of them from it."""
        lead = copies[0]
        if lead.is_meta:
            return torch.empty(self.n_free, dtype=lead.dtype, device=lead.device), math.nan
        with torch.no_grad():
            theta, error = _mean_of_copies(copies, self.n_free)
            if init == "preserve_std":
                theta = theta * math.sqrt(len(copies))
        return theta, error

    def fingerprint(self, offset: int = 0, shape: Shape | None = None) -> str:
        """A digest of what a free vector of this layout means: the shape, ``n_free``, every
        entry's ``index`` and ``sign`` (all +1 counts as no sign) and, for a tensor of a group,
        its ``offset`` and ``shape`` in the group's index space. Two layouts have the same
        fingerprint exactly when the same free vector gives the same tensor, whatever the ties
        were called.

        Computed once per layout (a BLAKE2b hash of the index bytes), then cached.

        >>> a = TieLayout(torch.tensor([[0, 1], [1, 2]]), 3)
        >>> b = TieLayout(torch.tensor([[0, 1], [2, 0]]), 3)
        >>> same = TieLayout(a.index.clone(), 3)
        >>> a.fingerprint() == same.fingerprint(), a.fingerprint() == b.fingerprint()
        (True, False)
        """
        whole = getattr(self, "_fingerprint", None)  # absent from layouts pickled before
        if whole is None:
            copies, broadcast = self._described(), self._broadcast_of()
            description: tuple[Any, ...] | None = None  # hashed: no index, at any size
            if broadcast is not None:
                reshaped = self._reshaped_to()  # only where set: ShareAlong's digest is kept
                extra = () if reshaped is None else (reshaped,)
                description = ("tietorch-layout-broadcast-1", *broadcast, *extra)
            elif copies:
                description = ("tietorch-layout-copies-1", self.n_free, copies)
            if description is not None:
                whole = hashlib.blake2b(repr(description).encode(), digest_size=16).hexdigest()
            else:
                whole = self.index_fingerprint()
            self._fingerprint = whole
        return _of_part(whole, self.shape, offset, shape)

    def index_fingerprint(self, offset: int = 0, shape: Shape | None = None) -> str:
        """The fingerprint hashed from the index and sign, whatever the layout is held as: what
        checkpoints written before descriptions existed recorded (compared with only when the
        description's fingerprint differs, so the index is built only then)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr(("tietorch-layout-1", self.shape, self.n_free)).encode())
        digest.update(self.index.reshape(-1).contiguous().numpy().data)
        if self.sign is not None and not bool((self.sign == 1).all()):  # all +1: no sign
            digest.update(b"sign")
            digest.update(self.sign.reshape(-1).contiguous().numpy().data)
        return _of_part(digest.hexdigest(), self.shape, offset, shape)

    def __repr__(self) -> str:
        zeros = f", n_zero={self.n_zero}" if self.sign is not None else ""
        return f"TieLayout(shape={self.shape}, n_free={self.n_free}{zeros})"


def _of_part(whole: str, layout_shape: Shape, offset: int, shape: Shape | None) -> str:
    """A layout's fingerprint narrowed to one tensor of a group (``offset``, ``shape``)."""
    part = layout_shape if shape is None else tuple(shape)
    if offset == 0 and part == layout_shape:
        return whole
    return hashlib.blake2b(repr((whole, offset, part)).encode(), digest_size=16).hexdigest()


def _class_size(shape: Shape, dims: tuple[int, ...]) -> int:
    """The entries of each class of a :meth:`TieLayout.broadcast` layout."""
    return math.prod(shape[d] for d in dims)


def _whole(part: tuple[int, Tensor]) -> tuple[int, Shape]:
    """A ``(offset, tensor)`` part as the ``(offset, shape)`` :meth:`TieLayout.view_of` reads."""
    return part[0], tuple(part[1].shape)


#: Entries averaged per step when copies are averaged: bounds the float64 scratch to a few MiB.
_CHUNK = 1 << 18


def _mean_of_copies(copies: Sequence[Tensor], n_free: int) -> tuple[Tensor, float]:
    """The entry-by-entry mean of equal-sized tensors, accumulated in float64 a chunk at a time
    and returned in their own dtype (exact when they are equal; never more than one extra copy
    of a tensor in memory), and the relative distance ``||W - P(W)|| / ||W||`` of all of them
    from it, in the same pass."""
    flats = [c.detach().reshape(-1) for c in copies]
    out = torch.empty(n_free, dtype=flats[0].dtype, device=flats[0].device)
    dtype = accumulation_dtype(out.device)
    off = total = 0.0
    for start in range(0, n_free, _CHUNK):
        chunk = [flat[start : start + _CHUNK].to(dtype) for flat in flats]
        mean = torch.stack(chunk).sum(0) / len(chunk)
        out[start : start + _CHUNK] = mean
        for values in chunk:
            off += float((values - mean).square().sum())
            total += float(values.square().sum())
    error = 0.0 if off == 0 else math.sqrt(off / total) if total else math.nan
    return out, error


def _as_count(value: Any, what: str) -> int:
    """A non-negative int; bools, floats and other non-integers are refused, not truncated."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise TieTypeError(f"{what} must be an int, got {value!r}") from None
    if count < 0:
        raise ShapeError(f"{what} must be >= 0, got {count}")
    return count


def check_init(init: object) -> None:
    if init not in ("project", "preserve_std"):
        raise DeclarationError(f"init must be 'project' or 'preserve_std', got {init!r}")

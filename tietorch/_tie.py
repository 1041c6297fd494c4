"""Declaring ties: the :class:`Tie` base class and the :class:`TieLayout` it produces."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._solver import _KeyConstraint, _RelationConstraint, solve

__all__ = ["Tie", "TieLayout"]

Shape = tuple[int, ...]
_LAYOUT_CACHE_SIZE = 4  # shapes remembered per tie; a 10^7-entry layout holds ~90 MB


def gather(theta: Tensor, index: Tensor, sign: Tensor | None, shape: Shape) -> Tensor:
    """``theta[index] * sign`` viewed as ``shape`` (``index`` flat; ``index_select`` is the
    fastest gather forward and backward on CPU, see the research notes)."""
    if theta.numel() == 0:  # every entry forced to zero
        return theta.new_zeros(shape) + theta.sum()  # keeps the result attached to autograd
    out = theta.index_select(0, index).view(shape)
    return out if sign is None else out * sign


def signed_mean(
    weight: Tensor, index: Tensor, sign: Tensor | None, inverse_counts: Tensor
) -> Tensor:
    """Per class, the mean of ``sign * weight``: the free vector of the orthogonal projection."""
    flat = weight.reshape(-1)
    if inverse_counts.numel() == 0:  # every entry forced to zero
        return flat.new_zeros(0)
    if sign is not None:
        flat = flat * sign.reshape(-1)
    total = flat.new_zeros(inverse_counts.shape).index_add_(0, index, flat)
    return total * inverse_counts


class TieLayout:
    """The solved form of a tie on one shape: ``W = theta[index] * sign``.

    Args:
        index: integer tensor with the weight's shape; ``index[x]`` is the free parameter that
            entry ``x`` reads, in ``[0, n_free)``.
        n_free: the number of free parameters (the length of ``theta``).
        sign: None (all +1) or a tensor of the same shape holding +1, -1 or 0 (0: the entry is
            forced to zero; its ``index`` is then ignored and may be 0 even when ``n_free == 0``).

    A hand-written, closed-form layout (see :meth:`Tie.layout`) is built with this constructor,
    which checks that it is well formed.

    Example:
        >>> layout = TieLayout(index=torch.tensor([[0, 1], [1, 2]]), n_free=3)
        >>> layout.materialize(torch.tensor([1.0, 2.0, 3.0]))
        tensor([[1., 2.],
                [2., 3.]])
        >>> layout.project(torch.tensor([[1.0, 0.0], [4.0, 3.0]]))
        tensor([1., 2., 3.])
    """

    __slots__ = ("_counts", "_index", "_n_free", "_sign")

    def __init__(self, index: Tensor, n_free: int, sign: Tensor | None = None) -> None:
        index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TypeError(f"TieLayout: index must be an integer tensor, got {index.dtype}")
        index = index.to(torch.long)
        n_free = int(n_free)
        if n_free < 0:
            raise ValueError(f"TieLayout: n_free must be >= 0, got {n_free}")
        live: Tensor | None = None
        if sign is not None:
            sign = torch.as_tensor(sign)
            if sign.shape != index.shape:
                raise ValueError(
                    f"TieLayout: sign has shape {tuple(sign.shape)}, index has {tuple(index.shape)}"
                )
            if sign.numel() and not bool(((sign == 1) | (sign == -1) | (sign == 0)).all()):
                raise ValueError("TieLayout: sign values must be +1, -1 or 0")
            sign = sign.to(torch.int8)
            live = sign != 0
            index = index.masked_fill(~live, 0)  # forced zeros read parameter 0, times 0
        used = index.reshape(-1) if live is None else index[live]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= n_free):
            raise ValueError(
                f"TieLayout: index values must lie in [0, n_free={n_free}), got "
                f"[{int(used.min())}, {int(used.max())}]"
            )
        counts = torch.bincount(used, minlength=n_free)
        if n_free and not bool((counts > 0).all()):
            unused = torch.nonzero(counts == 0).reshape(-1)[:5].tolist()
            raise ValueError(
                f"TieLayout: every free parameter must be used by some entry; unused: {unused}"
            )
        self._index = index
        self._n_free = n_free
        self._sign = sign
        self._counts = counts

    # Read-only: the class sizes (and every parametrization built from them) must stay valid.
    @property
    def index(self) -> Tensor:
        return self._index

    @property
    def n_free(self) -> int:
        return self._n_free

    @property
    def sign(self) -> Tensor | None:
        return self._sign

    @property
    def shape(self) -> Shape:
        return tuple(self.index.shape)

    @property
    def numel(self) -> int:
        return self.index.numel()

    @property
    def class_sizes(self) -> Tensor:
        """How many entries read each free parameter (forced zeros not counted)."""
        return self._counts

    @property
    def n_zero(self) -> int:
        """How many entries are forced to zero."""
        return 0 if self.sign is None else int((self.sign == 0).sum())

    def materialize(self, theta: Tensor) -> Tensor:
        """The full tensor ``theta[index] * sign`` for a free vector ``theta`` of length n_free."""
        if theta.shape != (self.n_free,):
            raise ValueError(
                f"expected a free vector of shape ({self.n_free},), got {tuple(theta.shape)}"
            )
        sign = None if self.sign is None else self.sign.to(theta.device, theta.dtype)
        return gather(theta, self.index.reshape(-1).to(theta.device), sign, self.shape)

    def project(self, weight: Tensor) -> Tensor:
        """The free vector of the orthogonal projection of ``weight`` onto the tied subspace.

        Each free parameter is the signed mean of its class; ``materialize(project(W))`` is the
        closest tensor to ``W`` (in the Frobenius norm) that satisfies the tie.
        """
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"expected a tensor of shape {self.shape}, got {tuple(weight.shape)}")
        device, dtype = weight.device, weight.dtype
        sign = None if self.sign is None else self.sign.to(device, dtype)
        inverse_counts = 1.0 / self._counts.to(device, dtype).clamp_min(1)
        return signed_mean(weight, self.index.reshape(-1).to(device), sign, inverse_counts)

    def __repr__(self) -> str:
        zeros = f", n_zero={self.n_zero}" if self.sign is not None else ""
        return f"TieLayout(shape={self.shape}, n_free={self.n_free}{zeros})"


class Tie:
    """A constraint on the entries of a tensor, declared as index maps.

    Subclass and override **one** of:

    * ``key(self, *idx)``: return a tensor (or a tuple of tensors); entries with equal keys
      share one value. Toeplitz is ``key = i - j``.
    * ``relations(self, *idx)``: return a tuple of index tensors, one per dim, meaning
      ``W[x] = s * W[g(x)]``; or a list of such tuples (several generators). ``sign(self, *idx)``
      gives ``s`` (default +1; -1 for anti-symmetry), or a list with one sign per generator.
    * ``layout(self, shape)``: a hand-written closed-form :class:`TieLayout` (faster than the
      generic search, and checkable against a declared key/relation with
      ``tietorch.testing.check_tie``).

    ``idx`` are broadcastable integer grids, one per dim (``idx[d]`` has size ``shape[d]`` along
    dim ``d`` and 1 elsewhere). Negative indices wrap like Python indexing (``-1 - a`` is the
    flip of ``a``); any other out-of-range index is an error. Override ``check_shape`` to refuse
    shapes the tie cannot apply to.

    From the declaration the library computes the classes of tied entries and the minimal free
    vector; ``a & b`` imposes both ties.

    Example:
        >>> class Toeplitz(Tie):
        ...     def key(self, i, j):
        ...         return i - j
        >>> Toeplitz().layout((3, 4)).n_free  # m + n - 1
        6
        >>> flip = Tie.from_relation(lambda a: (-1 - a,))
        >>> flip.layout((5,)).index.tolist()
        [0, 1, 2, 1, 0]
    """

    def key(self, *idx: Tensor) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
        raise NotImplementedError

    def sign(self, *idx: Tensor) -> int | Tensor | list[int | Tensor]:
        return 1

    def check_shape(self, shape: Shape) -> None:
        """Raise ``ValueError`` (naming the tie, the shape and the requirement) if refused."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __getstate__(self) -> dict[str, Any]:
        # Layouts are derived data (possibly ~100 MB): recompute instead of copying/pickling.
        state = dict(self.__dict__)
        state.pop("_layout_cache", None)
        return state

    def __and__(self, other: Tie) -> Tie:
        if not isinstance(other, Tie):
            return NotImplemented
        return AllOf(self, other)

    # ------------------------------------------------------------------ solving

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """The classes of this tie on ``shape``: a :class:`TieLayout` (cached per shape)."""
        shape = _as_shape(shape)
        cache: dict[Shape, TieLayout] = self.__dict__.setdefault("_layout_cache", {})
        if shape in cache:
            return cache[shape]
        self.check_shape(shape)
        n = math.prod(shape)
        index, n_free, sign = solve(n, self._constraints(shape))
        layout = TieLayout(index.view(shape), n_free, None if sign is None else sign.view(shape))
        if len(cache) >= _LAYOUT_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[shape] = layout
        return layout

    def _declares(self) -> str:
        """Which of key / relations / layout this tie's class overrides."""
        for name in ("key", "relations", "layout"):
            if getattr(type(self), name) is not getattr(Tie, name):
                return name
        raise TypeError(f"{self!r}: a Tie subclass must override key(), relations() or layout()")

    def _constraints(self, shape: Shape) -> list[_KeyConstraint | _RelationConstraint]:
        """The declaration evaluated on ``shape``, as flat constraints for the solver."""
        declares = self._declares()
        if declares == "layout":
            return [_layout_as_relation(self.layout(shape))]
        idx = _grids(shape)
        if declares == "key":
            parts = _evaluate_key(self, self.key(*idx), shape)
            return [_KeyConstraint(parts, math.prod(shape))]
        return _evaluate_relations(self, self.relations(*idx), self.sign(*idx), shape)

    # ------------------------------------------------------------- from functions

    @staticmethod
    def from_key(fn: Callable[..., Any], name: str | None = None) -> Tie:
        """A tie whose entries with equal ``fn(*idx)`` share one value.

        >>> hankel = Tie.from_key(lambda i, j: i + j)
        >>> hankel.layout((3, 3)).n_free
        5
        """
        return _FunctionTie(key=fn, name=name)

    @staticmethod
    def from_relation(
        fn: Callable[..., Any],
        sign: int | Callable[..., Any] = 1,
        name: str | None = None,
    ) -> Tie:
        """A tie ``W[x] = sign * W[fn(x)]``; ``sign`` is +1, -1 or a function of the indices.

        >>> seed = Tie.from_relation(lambda o, i, a, b: (i, o, -1 - a, -1 - b))
        >>> seed.layout((3, 3, 3, 3)).n_free  # nf(nf-1)/2*k*k + nf*ceil(k*k/2)
        42
        """
        if not callable(sign) and not (isinstance(sign, int) and sign in (1, -1)):
            raise ValueError(f"Tie.from_relation: sign must be +1, -1 or a function, got {sign!r}")
        return _FunctionTie(relation=fn, sign=sign, name=name)


class _FunctionTie(Tie):
    """A tie built by :meth:`Tie.from_key` / :meth:`Tie.from_relation`."""

    def __init__(
        self,
        key: Callable[..., Any] | None = None,
        relation: Callable[..., Any] | None = None,
        sign: int | Callable[..., Any] = 1,
        name: str | None = None,
    ) -> None:
        self._key, self._relation, self._sign = key, relation, sign
        fn = key if key is not None else relation
        self._name = name or getattr(fn, "__name__", "fn")

    def _declares(self) -> str:
        return "key" if self._key is not None else "relations"

    def key(self, *idx: Tensor) -> Tensor | tuple[Tensor, ...]:
        assert self._key is not None
        return self._key(*idx)

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
        assert self._relation is not None
        return self._relation(*idx)

    def sign(self, *idx: Tensor) -> int | Tensor | list[int | Tensor]:
        return self._sign(*idx) if callable(self._sign) else self._sign

    def __repr__(self) -> str:
        if self._key is not None:
            return f"Tie.from_key({self._name})"
        sign = "" if self._sign == 1 else f", sign={getattr(self._sign, '__name__', self._sign)}"
        return f"Tie.from_relation({self._name}{sign})"


class AllOf(Tie):
    """Several ties at once (``a & b``): the closure of all their relations, signs included.

    >>> from tietorch import Symmetric, Toeplitz
    >>> (Symmetric() & Toeplitz()).layout((4, 4)).n_free  # symmetric Toeplitz: n
    4
    """

    def __init__(self, *ties: Tie) -> None:
        flat: list[Tie] = []
        for tie in ties:
            flat.extend(tie.ties if isinstance(tie, AllOf) else (tie,))
        self.ties = tuple(flat)

    def check_shape(self, shape: Shape) -> None:
        for tie in self.ties:
            tie.check_shape(shape)

    def _declares(self) -> str:
        return "all of"

    def _constraints(self, shape: Shape) -> list[_KeyConstraint | _RelationConstraint]:
        return [c for tie in self.ties for c in tie._constraints(shape)]

    def __repr__(self) -> str:
        return " & ".join(repr(t) if not isinstance(t, AllOf) else f"({t!r})" for t in self.ties)


# ---------------------------------------------------------------------- evaluation helpers


def _as_shape(shape: Sequence[int] | torch.Size) -> Shape:
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"invalid shape {shape}")
    return shape


def _grids(shape: Shape) -> tuple[Tensor, ...]:
    ndim = len(shape)
    return tuple(
        torch.arange(n).view([n if d == k else 1 for k in range(ndim)]) for d, n in enumerate(shape)
    )


def _broadcast(tie: Tie, what: str, value: Any, shape: Shape) -> Tensor:
    tensor = torch.as_tensor(value)
    try:
        return torch.broadcast_to(tensor, shape)
    except RuntimeError:
        raise ValueError(
            f"{tie!r}: {what} has shape {tuple(tensor.shape)}, which does not broadcast to the "
            f"tensor's shape {shape}"
        ) from None


def _evaluate_key(tie: Tie, key: Any, shape: Shape) -> tuple[Tensor, ...]:
    parts = key if isinstance(key, tuple) else (key,)
    return tuple(
        _broadcast(tie, f"key part {k}", part, shape).reshape(-1) for k, part in enumerate(parts)
    )


def _evaluate_relations(
    tie: Any, relations: Any, signs: Any, shape: Shape, target_shape: Shape | None = None
) -> list[_KeyConstraint | _RelationConstraint]:
    """Flat relation constraints from what ``relations()``/``sign()`` returned on ``shape``.

    The relations index a tensor of ``target_shape`` (default: the same tensor); out-of-range
    indices are refused, negative ones wrap.
    """
    target_shape = shape if target_shape is None else target_shape
    if isinstance(relations, tuple):
        relations = [relations]
    if not isinstance(relations, list):
        raise TypeError(
            f"{tie!r}: relations() must return a tuple of index tensors (one per dim) or a "
            f"list of such tuples, got {type(relations).__name__}"
        )
    if not isinstance(signs, list):
        signs = [signs] * len(relations)
    if len(signs) != len(relations):
        raise ValueError(
            f"{tie!r}: sign() returned {len(signs)} signs for {len(relations)} relations"
        )
    strides = torch.ones(len(target_shape), dtype=torch.long)
    for d in range(len(target_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * target_shape[d + 1]
    out: list[_KeyConstraint | _RelationConstraint] = []
    for r, (relation, sign) in enumerate(zip(relations, signs)):
        if not isinstance(relation, tuple) or len(relation) != len(target_shape):
            got = len(relation) if isinstance(relation, tuple) else type(relation).__name__
            raise ValueError(
                f"{tie!r}: relation {r} must give one index tensor per dim of the shape "
                f"{target_shape} ({len(target_shape)}), got {got}"
            )
        target = torch.zeros(shape, dtype=torch.long)
        for d, (component, size) in enumerate(zip(relation, target_shape)):
            component = torch.as_tensor(component)
            if component.is_floating_point() or component.is_complex():
                raise TypeError(
                    f"{tie!r}: relation {r} gives a {component.dtype} index for dim {d}"
                )
            component = component.to(torch.long)  # narrow ints would overflow the flat index
            if component.numel():
                low, high = int(component.min()), int(component.max())
                if low < -size or high >= size:
                    bad = low if low < -size else high
                    raise ValueError(
                        f"{tie!r}: relation {r} maps dim {d} (size {size}) to index {bad}, "
                        f"outside [-{size}, {size}) on shape {target_shape}"
                    )
            component = torch.where(component < 0, component + size, component)
            target.add_(_broadcast(tie, f"relation {r}, dim {d}", component, shape) * strides[d])
        sign_tensor: Tensor | None = None
        if not (isinstance(sign, int) and sign == 1):
            sign_tensor = torch.as_tensor(sign)
            if sign_tensor.numel() and not bool(((sign_tensor == 1) | (sign_tensor == -1)).all()):
                raise ValueError(f"{tie!r}: sign() must give +1 or -1, got other values")
            sign_tensor = _broadcast(tie, f"sign of relation {r}", sign_tensor, shape)
            sign_tensor = sign_tensor.reshape(-1).to(torch.int8)
            if bool((sign_tensor > 0).all()):
                sign_tensor = None
        out.append(_RelationConstraint(target.reshape(-1), sign_tensor))
    return out


def _layout_as_relation(layout: TieLayout) -> _RelationConstraint:
    """A layout as relations: every entry equals (sign-adjusted) its class's first entry."""
    index = layout.index.reshape(-1)
    n = index.numel()
    first = torch.full((max(layout.n_free, 1),), n, dtype=torch.long)
    if layout.sign is None:
        first.scatter_reduce_(0, index, torch.arange(n), "amin")
        return _RelationConstraint(first[index], None)
    sign = layout.sign.reshape(-1)
    live = sign != 0
    first.scatter_reduce_(0, index[live], torch.arange(n)[live], "amin")
    target = torch.where(live, first[index].clamp_max(n - 1), torch.arange(n))
    # W[x] = s_x * s_first * W[first]; a forced zero is W[x] = -W[x].
    relative = torch.where(live, sign * sign[target], torch.tensor(-1, dtype=torch.int8))
    return _RelationConstraint(target, relative.to(torch.int8))

"""Declaring ties: the :class:`Tie` base class, ``a & b`` (:class:`AllOf`), and the evaluation
of a declaration into constraints for the solver (which returns a :class:`TieLayout`)."""

from __future__ import annotations

import math
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._layout import Shape, TieLayout, on_cpu
from ._solver import _KeyConstraint, _RelationConstraint, solve
from .errors import (
    ArgumentError,
    DeclarationError,
    ShapeError,
    TietorchError,
    TieTypeError,
    _context,
)

__all__ = ["AllOf", "Tie", "TieLayout"]

_LAYOUT_CACHE_SIZE = 4  # shapes remembered per tie; a 10^7-entry layout holds ~90 MB
# Peak bytes per entry while solving, by kind of declaration; the up-front size check compares
# the estimate with the memory. Measured as the peak RSS growth of one layout on 1.6 * 10^7
# entries (torch 2.13, CPU): a key (int64 codes, torch.unique's sort and inverse) 42, unsigned
# relations (targets, parents, edges) 36, signed relations (parities too) 79; rounded up.
KEY_BYTES_PER_ENTRY = 48
RELATION_BYTES_PER_ENTRY = 48
SIGNED_BYTES_PER_ENTRY = 96
#: what a closed-form layout that builds its index needs (the index and a few temporaries)
CLOSED_FORM_BYTES_PER_ENTRY = 48
_CACHE_LOCK = threading.Lock()  # guards every tie's layout cache (solving runs outside it)


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
        """Override to declare the tie by a key: given one integer index grid per dim (each
        of the tensor's shape), return a tensor (or a tuple of tensors) of keys; entries whose
        keys are all equal share one free parameter."""
        raise NotImplementedError

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
        """Override to declare the tie by relations ``W[x] = sign(x) * W[g(x)]``: given one
        integer index grid per dim, return the image ``g(x)`` as one index tensor per dim
        (negative indices count from the end), or a list of such images, one per relation."""
        raise NotImplementedError

    def sign(self, *idx: Tensor) -> int | Tensor | list[int | Tensor]:
        """The sign ``s`` of each relation, ``+1`` or ``-1``: an int for every entry, or a
        tensor over the index grids (a list of them, one per relation). Default ``+1``."""
        return 1

    def check_shape(self, shape: Shape) -> None:
        """Raise ``ValueError`` saying what ``shape`` lacks if the tie does not apply to it; the
        error tietorch reports names the tie and the shape (a :class:`~tietorch.errors.ShapeError`).

        >>> class Square(Tie):
        ...     def check_shape(self, shape):
        ...         if shape[0] != shape[1]:
        ...             raise ValueError("needs a square matrix")
        ...     def key(self, i, j):
        ...         return i
        >>> Square().layout((2, 3))
        Traceback (most recent call last):
        ...
        tietorch.errors.ShapeError: Square() on shape (2, 3): needs a square matrix
        """

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

    @on_cpu
    def layout(self, shape: Sequence[int]) -> TieLayout:
        """The classes of this tie on ``shape``: a :class:`TieLayout` (cached per shape).

        Thread-safe: threads may call it at once (a shape missing from the cache may then be
        solved twice; both results are equal).
        """
        return cached_layout(self, shape, self._solved)

    def _solved(self, shape: Shape) -> TieLayout:
        """The layout found by the solver from the declaration (``shape`` already checked)."""
        with _context(f"{self!r} on shape {shape}"):  # named here, once, for all below
            check_size(shape, self._solve_bytes_per_entry(shape))
            constraints = self._constraints(shape)
        n = math.prod(shape)
        index, n_free, sign = solve(n, constraints)
        return TieLayout(index.view(shape), n_free, None if sign is None else sign.view(shape))

    def _declares(self) -> str:
        """Which of key / relations / layout this tie's class overrides (a hand-written layout
        may come with a key or relations that declare it: those are what is checked)."""
        overrides = [
            name
            for name in ("key", "relations", "layout")
            if getattr(type(self), name) is not getattr(Tie, name)
        ]
        if "key" in overrides and "relations" in overrides:
            raise DeclarationError(
                "a Tie must declare key() or relations(), not both (relations() would "
                "be ignored); declare them as two ties and combine them with `&`, e.g. "
                "Tie.from_key(f) & Tie.from_relation(g)"
            )
        if not overrides:
            raise TieTypeError("a Tie subclass must override key(), relations() or layout()")
        return overrides[0]

    def _solve_bytes_per_entry(self, shape: Shape) -> int:
        """The peak memory the solver needs per entry of ``shape`` for this declaration."""
        declares = self._declares()
        if declares == "key":
            return KEY_BYTES_PER_ENTRY
        if declares == "relations" and type(self).sign is not Tie.sign:
            # A constant sign shows on one entry, without evaluating the whole shape.
            try:
                signs = self.sign(*(torch.zeros([1] * len(shape), dtype=torch.long),) * len(shape))
            except Exception:  # evaluated in full, and reported, by _constraints
                signs = -1
            if not all(
                type(s) is int and s == 1 for s in (signs if isinstance(signs, list) else [signs])
            ):
                return SIGNED_BYTES_PER_ENTRY
        return RELATION_BYTES_PER_ENTRY

    def _constraints(self, shape: Shape) -> list[_KeyConstraint | _RelationConstraint]:
        """The declaration evaluated on ``shape``, as flat constraints for the solver."""
        declares = self._declares()
        if declares == "layout":
            return [_layout_as_relation(solved_layout(self, shape))]
        idx = _grids(shape)
        try:
            if declares == "key":
                parts = _evaluate_key(self, self.key(*idx), shape)
                return [_KeyConstraint(parts, math.prod(shape))]
            return _evaluate_relations(self, self.relations(*idx), self.sign(*idx), shape)
        except (IndexError, RuntimeError) as error:  # torch errors inside the user's code
            raise DeclarationError(
                f"evaluating its {declares}() raised {type(error).__name__}: {error}"
            ) from error

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
            raise ArgumentError(
                f"Tie.from_relation: sign must be +1, -1 or a function, got {sign!r}"
            )
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
        self.ties: tuple[Tie, ...] = tuple(flat)

    def check_shape(self, shape: Shape) -> None:
        for tie in self.ties:
            tie.check_shape(shape)

    def _declares(self) -> str:
        return "all of"

    def _solve_bytes_per_entry(self, shape: Shape) -> int:
        return max((tie._solve_bytes_per_entry(shape) for tie in self.ties), default=0)

    def _constraints(self, shape: Shape) -> list[_KeyConstraint | _RelationConstraint]:
        return [c for tie in self.ties for c in tie._constraints(shape)]

    def __repr__(self) -> str:
        return " & ".join(repr(t) if not isinstance(t, AllOf) else f"({t!r})" for t in self.ties)


# ---------------------------------------------------------------------- evaluation helpers


def _as_shape(shape: Sequence[int] | torch.Size) -> Shape:
    """``shape`` as a tuple of non-negative ints; floats, bools and strings are refused."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise TieTypeError(f"a shape must be a sequence of ints, got {shape!r}")
    try:
        if any(isinstance(s, bool) for s in shape):
            raise TypeError
        values = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TieTypeError(f"a shape must be a sequence of ints, got {tuple(shape)!r}") from None
    if any(s < 0 for s in values):
        raise ShapeError(f"invalid shape {values}: sizes must be >= 0")
    return values


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def cached_layout(
    tie: Tie,
    shape: Sequence[int],
    build: Callable[[Shape], TieLayout],
    bytes_per_entry: int = 0,
) -> TieLayout:
    """``tie``'s layout on ``shape`` from its cache, else checked (``check_shape``, and the
    memory ``build`` needs: ``bytes_per_entry``, 0 for a description that builds no index),
    built by ``build`` and cached (the last few shapes). Errors name the tie and the shape."""
    with _context(f"{tie!r}.layout"):
        shape = _as_shape(shape)
    with _CACHE_LOCK:
        cache: OrderedDict[Shape, TieLayout] = tie.__dict__.setdefault(
            "_layout_cache", OrderedDict()
        )
        if shape in cache:
            return cache[shape]
    with _context(f"{tie!r} on shape {shape}"):
        checked_shape(tie, shape)
        check_size(shape, bytes_per_entry)  # no tensor has 2**62 entries, even a description
    layout = build(shape)
    with _CACHE_LOCK:
        cache[shape] = layout
        while len(cache) > _LAYOUT_CACHE_SIZE:
            cache.popitem(last=False)
    return layout


def checked_shape(tie: Tie, shape: Shape) -> None:
    """``tie.check_shape(shape)``; a refusal becomes a :class:`ShapeError` (its message says what
    is wrong; the caller's context names the tie and the shape)."""
    try:
        tie.check_shape(shape)
    except TietorchError:
        raise
    except ValueError as error:  # a tie's own refusal: one class for every refused shape
        raise ShapeError(str(error)) from error


def check_size(shape: Shape, bytes_per_entry: int) -> None:
    """Refuse, before anything is allocated, a shape whose solve cannot fit in memory
    (``bytes_per_entry``: the estimate for this kind of layout, e.g.
    :meth:`Tie._solve_bytes_per_entry`)."""
    n = math.prod(shape)
    if n >= 2**62:
        raise ShapeError(f"{n:,} entries: more than a tensor can hold (2**62)")
    needed = n * bytes_per_entry
    memory = _memory_bytes()
    if memory is not None and needed > memory:
        have = "" if memory is None else f", more than this machine's {memory / 2**30:.3g} GiB"
        raise ShapeError(
            f"{n:,} entries; solving them needs about "
            f"{needed / 2**30:.3g} GiB ({bytes_per_entry} bytes per entry){have}. Tie "
            "smaller tensors, or write the layout in closed form (override Tie.layout)"
        )


def solved_layout(tie: Tie, shape: Shape) -> TieLayout:
    """``tie.layout(shape)``, checked: a user's ``layout()`` override must return a
    :class:`TieLayout` of ``shape``."""
    layout = on_cpu(tie.layout)(shape)  # an override of layout() is solved on the CPU too
    if not isinstance(layout, TieLayout):
        raise DeclarationError(
            f"{tie!r}: layout({shape}) returned a {type(layout).__name__}; expected a "
            "tietorch.TieLayout"
        )
    if layout.shape != shape:
        raise DeclarationError(
            f"{tie!r}: layout({shape}) returned a layout of shape {layout.shape}"
        )
    return layout


def _grids(shape: Shape) -> tuple[Tensor, ...]:
    ndim = len(shape)
    return tuple(
        torch.arange(n).view([n if d == k else 1 for k in range(ndim)]) for d, n in enumerate(shape)
    )


def _as_values(tie: Any, what: str, value: Any, kinds: str) -> Tensor:
    """What a declaration returned for ``what``, as a tensor of an accepted kind of dtype.

    ``kinds``: ``"index"`` (integers), ``"key"`` (integers, bools or finite floats) or
    ``"sign"`` (real numbers).
    """
    if value is None or isinstance(value, (str, bytes, list, dict, set)):
        raise TieTypeError(f"{what} is a {type(value).__name__}; expected a tensor (or an int)")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TieTypeError(f"{what} is a {type(value).__name__}, which is not a tensor") from None
    dtype = tensor.dtype
    if dtype.is_complex:
        raise TieTypeError(f"{what} is complex ({dtype}); ties need real values")
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        raise TieTypeError(f"{what} has dtype {dtype}; use int64")
    if kinds == "index" and (dtype.is_floating_point or dtype == torch.bool):
        raise TieTypeError(
            f"{what} has dtype {dtype}; index tensors must be integers (a bool "
            "tensor is a mask, not an index)"
        )
    if kinds == "key" and dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise DeclarationError(
            f"{what} holds NaN or infinite values; every key must be finite (NaN "
            "never equals itself, so each such entry would be its own class)"
        )
    return tensor


def _broadcast(tie: Any, what: str, tensor: Tensor, shape: Shape) -> Tensor:
    try:
        return torch.broadcast_to(tensor, shape)
    except RuntimeError:
        raise ShapeError(
            f"{what} has shape {tuple(tensor.shape)}, which does not broadcast to the "
            f"tensor's shape {shape}"
        ) from None


def key_parts(tie: Any, key: Any) -> tuple[Any, ...]:
    """What ``key()`` returned, as a tuple of parts (a single tensor is one part)."""
    if isinstance(key, list):
        raise TieTypeError(
            "key() returned a list; return a tensor, or a tuple of tensors for a "
            "key of several parts"
        )
    return key if isinstance(key, tuple) else (key,)


def relation_list(tie: Any, relations: Any, signs: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """What ``relations()``/``sign()`` returned, as ``[(relation, sign), ...]``: one tuple of
    index tensors per generator, each with its sign."""
    if isinstance(relations, tuple):
        relations = [relations]
    if not isinstance(relations, list):
        raise TieTypeError(
            f"relations() must return a tuple of index tensors (one per dim) or a "
            f"list of such tuples, got {type(relations).__name__}"
        )
    if not relations:
        raise DeclarationError("relations() returned no relation (an empty list)")
    if not isinstance(signs, list):
        signs = [signs] * len(relations)
    if len(signs) != len(relations):
        raise DeclarationError(f"sign() returned {len(signs)} signs for {len(relations)} relations")
    return list(zip(relations, signs))


def _evaluate_key(tie: Tie, key: Any, shape: Shape) -> tuple[Tensor, ...]:
    return tuple(
        _broadcast(
            tie, f"key part {k}", _as_values(tie, f"key part {k}", part, "key"), shape
        ).reshape(-1)
        for k, part in enumerate(key_parts(tie, key))
    )


def _evaluate_relations(
    tie: Any, relations: Any, signs: Any, shape: Shape, target_shape: Shape | None = None
) -> list[_KeyConstraint | _RelationConstraint]:
    """Flat relation constraints from what ``relations()``/``sign()`` returned on ``shape``.

    The relations index a tensor of ``target_shape`` (default: the same tensor); out-of-range
    indices are refused, negative ones wrap.
    """
    target_shape = shape if target_shape is None else target_shape
    strides = torch.ones(len(target_shape), dtype=torch.long)
    for d in range(len(target_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * target_shape[d + 1]
    out: list[_KeyConstraint | _RelationConstraint] = []
    for r, (relation, sign) in enumerate(relation_list(tie, relations, signs)):
        if not isinstance(relation, tuple) or len(relation) != len(target_shape):
            got = len(relation) if isinstance(relation, tuple) else type(relation).__name__
            raise DeclarationError(
                f"relation {r} must give one index tensor per dim of the shape "
                f"{target_shape} ({len(target_shape)}), got {got}"
            )
        target = torch.zeros(shape, dtype=torch.long)
        for d, (component, size) in enumerate(zip(relation, target_shape)):
            what = f"relation {r}, dim {d}"
            component = _as_values(tie, what, component, "index")
            component = component.to(torch.long)  # narrow ints would overflow the flat index
            if component.numel():
                low, high = int(component.min()), int(component.max())
                if low < -size or high >= size:
                    bad = low if low < -size else high
                    raise DeclarationError(
                        f"relation {r} maps dim {d} (size {size}) to index {bad}, "
                        f"outside [-{size}, {size}) on shape {target_shape}"
                    )
            component = torch.where(component < 0, component + size, component)
            target.add_(_broadcast(tie, what, component, shape) * strides[d])
        sign_tensor: Tensor | None = None
        if not (isinstance(sign, int) and not isinstance(sign, bool) and sign == 1):
            sign_tensor = _as_values(tie, f"the sign of relation {r}", sign, "sign")
            if sign_tensor.dtype == torch.bool or (
                sign_tensor.numel() and not bool(((sign_tensor == 1) | (sign_tensor == -1)).all())
            ):
                raise DeclarationError(
                    f"sign() must give +1 or -1 for relation {r}, got other values"
                )
            sign_tensor = _broadcast(tie, f"the sign of relation {r}", sign_tensor, shape)
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

"""``check_tie``: a tie's layout against its own declaration, over many shapes, with Hypothesis."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from .._solver import solve
from .._rank import constraint_matrix, solution_dimension
from .._tie import (
    AllOf,
    Tie,
    TieLayout,
    _evaluate_key,
    _evaluate_relations,
    _grids,
    _layout_as_relation,
)
from .strategies import _as_shape, _refusal, shapes_for

__all__ = ["RANK_CHECK_MAX_NUMEL", "check_tie"]

Shape = tuple[int, ...]
_T = TypeVar("_T")

#: The minimality check (dense rank of the declared constraint system) runs on shapes with at
#: most this many entries; larger shapes get every other check.
RANK_CHECK_MAX_NUMEL = 400

# Hypothesis's "explain" phase would only point at lines of this module: skip it.
_PHASES = tuple(phase for phase in Phase if phase.name != "explain")
_RTOL, _ATOL = 1e-9, 1e-12  # theta is float64 and the gather copies it: any tolerance works


def check_tie(
    tie: Tie,
    shapes: SearchStrategy[Sequence[int]] | Iterable[Sequence[int]] | None = None,
    max_examples: int = 100,
) -> None:
    """Property-test ``tie`` with Hypothesis; raise ``AssertionError`` on a counterexample.

    For each drawn shape (and a random free vector ``theta``, float64), it checks:

    1. **the layout is well formed**: ``tie.layout(shape)`` returns a :class:`~tietorch.TieLayout`
       whose ``index`` has the tensor's shape and an integer dtype, whose entries read free
       parameters in ``[0, n_free)``, every free parameter is read by some entry, ``sign`` is
       None or holds only +1, -1, 0, ``class_sizes`` matches ``index``, and ``materialize``
       gives ``theta[index] * sign`` with the right shape. What the layout returns is checked,
       not trusted: a hand-written ``layout()`` may return anything.
    2. **the declaration holds**: every declared relation ``W[x] = sign * W[g(x)]`` holds for
       ``W = layout.materialize(theta)``; for a ``key`` tie, entries with equal keys are equal.
       The declaration is evaluated here, independently of the solver.
    3. **minimal and complete**: on shapes of at most :data:`RANK_CHECK_MAX_NUMEL` entries,
       ``n_free`` equals the dimension of the solution space of the declared constraints, computed
       by dense rank (``tietorch._rank.solution_dimension``), so a layout that ties too much
       (over-ties: some tensor that satisfies the declaration cannot be represented; the message
       names two entries it ties that the declaration leaves independent) or too little
       (under-ties: too many free parameters) is caught. On larger shapes, over-tying is
       caught by comparing with tietorch's own solve of the declaration (under-tying always
       breaks a declared relation, check 2).
    4. **projection and gradients**: ``materialize(project(W))`` is idempotent and orthogonal
       (the residual is orthogonal to every tied direction), ``project(materialize(theta))``
       gives ``theta`` back, and backpropagating ``sum(W * R)`` (``R`` random) gives each free
       parameter the signed sum of ``R`` over its class, non-zero: gradients reach every one.

    What is the declaration? A tie's ``key`` or ``relations``/``sign``; for ``a & b`` the
    declarations of all parts. A class that overrides ``layout`` **and** a ``key`` or
    ``relations`` (a closed form declared alongside its constraint, the recommended way to write
    a fast layout) has its ``layout`` checked against that declaration. A tie that overrides
    only ``layout`` declares nothing to check it against: check_tie then runs checks 1 and 4
    only, so declare the constraint alongside a closed-form layout. (Inside ``a & b``, a
    layout-only part's layout is its declaration.)

    Args:
        tie: the tie to check.
        shapes: a Hypothesis strategy of shapes (shapes its ``check_shape`` refuses are filtered
            out), an iterable of shapes (each is checked, then Hypothesis draws among them; a
            refused one is an error), or None: small shapes from
            :func:`tietorch.testing.strategies.shapes_for` (1 to 4 dims of sizes 1 to 5 that
            ``check_shape`` accepts; a ``ValueError`` asks for ``shapes=`` when none fits).
        max_examples: how many (shape, theta) examples Hypothesis tries.

    Call it from a plain test function, **not inside a @given test** (Hypothesis cannot nest
    ``@given``; this raises ``RuntimeError``). It runs with ``deadline=None`` (the first layout of
    a shape is solved, later ones are cached), ``database=None`` (every call shares one inner
    test function, so saved examples would be replayed against other ties),
    ``report_multiple_bugs=False`` (a single, shrunk ``AssertionError``) and without the
    "explain" phase; other settings come from the active Hypothesis profile. The message names
    the tie, the shape, the check and the violation, e.g. ``relation 0 does not hold:
    W[0, 0, 0, 0] = 1.541 but sign * W[0, 0, 1, 1] = +1 * -0.2934 = -0.2934``; Hypothesis adds
    the falsifying example (the shape, and the seed of theta) as a note.

    Example:
        >>> from tietorch import SymmetricFlip, Toeplitz
        >>> check_tie(SymmetricFlip(), max_examples=10)
        >>> check_tie(Toeplitz(), shapes=[(3, 3), (2, 5), (2, 3, 4)], max_examples=5)
    """
    if not isinstance(tie, Tie):
        raise TypeError(f"check_tie: expected a tietorch.Tie, got {type(tie).__name__}")
    if isinstance(max_examples, bool) or int(max_examples) < 1:
        raise ValueError(f"check_tie: max_examples must be >= 1, got {max_examples!r}")
    if _in_hypothesis_test():
        raise RuntimeError(
            "check_tie runs its own Hypothesis search (@given), and Hypothesis cannot nest @given: "
            "call check_tie from a plain test function, not inside a @given test"
        )
    strategy, listed = _shape_strategy(tie, shapes)
    checker = _Checker(tie)

    @settings(
        max_examples=int(max_examples),
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
        phases=_PHASES,
    )
    @given(shape=strategy, seed=st.integers(0, 2**32 - 1))
    def check_tie_example(shape: Shape, seed: int) -> None:
        checker.check(shape, seed)

    test = check_tie_example
    for shape in reversed(listed):  # every listed shape at least once, smallest first
        test = example(shape=shape, seed=0)(test)
    test()


# ------------------------------------------------------------------------------- shapes


def _shape_strategy(
    tie: Tie, shapes: SearchStrategy[Sequence[int]] | Iterable[Sequence[int]] | None
) -> tuple[SearchStrategy[Shape], list[Shape]]:
    if shapes is None:
        return shapes_for(tie), []
    if isinstance(shapes, SearchStrategy):
        return shapes.map(_as_shape).filter(lambda s: _refusal(tie, s) is None), []
    if isinstance(shapes, (str, bytes)):
        raise TypeError(f"check_tie: shapes must be shapes, got {shapes!r}")
    listed = list(shapes)
    if any(isinstance(s, (int, np.integer)) for s in listed):
        raise TypeError(
            f"check_tie: shapes= takes several shapes, e.g. shapes=[{tuple(listed)}], "
            f"got the single shape {tuple(listed)}"
        )
    if not listed:
        raise ValueError("check_tie: shapes= is empty")
    unique = sorted({_as_shape(s) for s in listed}, key=lambda s: (math.prod(s), len(s), s))
    for shape in unique:
        error = _refusal(tie, shape)
        if error is not None:
            raise ValueError(
                f"check_tie: {tie!r} refuses shape {shape} ({type(error).__name__}: {error}); "
                f"pass shapes its check_shape accepts"
            )
    return st.sampled_from(unique), unique


def _in_hypothesis_test() -> bool:
    try:
        from hypothesis import currently_in_test_context
    except ImportError:  # older Hypothesis
        try:
            from hypothesis.control import currently_in_test_context
        except ImportError:
            return False
    return bool(currently_in_test_context())


# ------------------------------------------------------------------------------ helpers


def _fail(message: str) -> NoReturn:
    raise AssertionError(message)


def _entry(flat: int, shape: Shape) -> str:
    if not shape:
        return "W[()]"
    coords = np.unravel_index(int(flat), shape)
    return "W[" + ", ".join(str(int(c)) for c in coords) + "]"


def _num(value: float | Tensor) -> str:
    return f"{float(value):.4g}"


def _max(values: Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def _first(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _flat_parts(layout: TieLayout) -> tuple[Tensor, Tensor, Tensor]:
    """``index`` (flat, long), ``sign`` (flat float64, ones if None) and the live mask."""
    index = layout.index.reshape(-1).to(torch.long)
    if layout.sign is None:
        sign = torch.ones(index.numel(), dtype=torch.float64)
    else:
        sign = layout.sign.reshape(-1).to(torch.float64)
    return index, sign, sign != 0


def _class_sums(layout: TieLayout, values: Tensor) -> Tensor:
    """``G^T values``: per free parameter, the signed sum of ``values`` over its class."""
    index, sign, live = _flat_parts(layout)
    flat = values.reshape(-1).to(torch.float64) * sign
    return torch.zeros(layout.n_free, dtype=torch.float64).index_add_(0, index[live], flat[live])


def _malformed(layout: object, shape: Shape) -> str | None:
    """What is wrong with ``layout`` as the layout of a tensor of ``shape``, or None."""
    if not isinstance(layout, TieLayout):
        return f"layout() returned a {type(layout).__name__}, not a tietorch.TieLayout"
    n_free = layout.n_free
    if isinstance(n_free, bool) or not isinstance(n_free, (int, np.integer)):
        return f"n_free = {n_free!r} is not an int"
    n_free = int(n_free)
    if n_free < 0:
        return f"n_free = {n_free} is negative"
    index, sign = layout.index, layout.sign
    if not isinstance(index, Tensor):
        return f"index is a {type(index).__name__}, not a tensor"
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        return f"index has dtype {index.dtype}; it must be an integer tensor"
    if tuple(index.shape) != shape:
        return f"index has shape {tuple(index.shape)}, but the tensor has shape {shape}"
    flat = index.reshape(-1).to(torch.long)
    live = torch.ones(flat.numel(), dtype=torch.bool)
    if sign is not None:
        if not isinstance(sign, Tensor):
            return f"sign is a {type(sign).__name__}, not a tensor or None"
        if tuple(sign.shape) != shape:
            return f"sign has shape {tuple(sign.shape)}, but the tensor has shape {shape}"
        s = sign.reshape(-1)
        illegal = ~((s == 1) | (s == -1) | (s == 0))
        if illegal.any():
            x = _first(illegal)
            return (
                f"sign values must be +1, -1 or 0, but the sign of {_entry(x, shape)} is "
                f"{s[x].item()}"
            )
        live = s != 0
    out = live & ((flat < 0) | (flat >= n_free))
    if out.any():
        x = _first(out)
        return (
            f"index out of range: {_entry(x, shape)} reads free parameter {int(flat[x])}, outside "
            f"[0, n_free = {n_free})"
        )
    out = ~live & ((flat < 0) | (flat >= max(n_free, 1)))
    if out.any():
        x = _first(out)
        return (
            f"index out of range: {_entry(x, shape)} is forced to zero (sign 0) but its index "
            f"{int(flat[x])} lies outside [0, {max(n_free, 1)}), so materialize would read "
            f"past theta"
        )
    counts = torch.bincount(flat[live], minlength=n_free)
    unused = torch.nonzero(counts == 0).reshape(-1)
    if unused.numel():
        some = unused[:8].tolist()
        more = ", ..." if unused.numel() > 8 else ""
        return (
            f"{unused.numel()} of the n_free = {n_free} free parameters are read by no entry "
            f"(unused: {str(some)[1:-1]}{more}): every free parameter must be used, so n_free "
            f"is too large or the index skips parameters"
        )
    sizes = layout.class_sizes
    if (
        not isinstance(sizes, Tensor)
        or sizes.shape != counts.shape
        or not torch.equal(sizes.to(torch.long), counts)
    ):
        return (
            "class_sizes does not match the index and sign (was index, sign or n_free changed "
            "after the layout was built?); project() uses class_sizes"
        )
    return None


def _layout_relation(layout: TieLayout) -> tuple[Tensor, Tensor]:
    """A well-formed layout as one relation: each entry equals (sign-adjusted) its class's
    first entry; a forced zero is ``W[x] = -W[x]``. Returns flat ``target`` and float ``sign``."""
    relation = _layout_as_relation(layout)
    if relation.sign is None:
        return relation.target, torch.ones(relation.target.numel(), dtype=torch.float64)
    return relation.target, relation.sign.to(torch.float64)


class _LayoutDeclaration(Tie):
    """A layout-only part of ``a & b``, whose layout is its declaration, as relations (so that
    ``tietorch._rank`` can write it out)."""

    def __init__(self, part: Tie) -> None:
        self.part = part

    def _maps(self, idx: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        shape = tuple(torch.broadcast_shapes(*(i.shape for i in idx)))
        target, sign = _layout_relation(self.part.layout(shape))
        coords = np.unravel_index(target.numpy(), shape)
        return tuple(torch.from_numpy(c).view(shape) for c in coords), sign.view(shape)

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...]:
        return self._maps(idx)[0]

    def sign(self, *idx: Tensor) -> Tensor:
        return self._maps(idx)[1]

    def __repr__(self) -> str:
        return f"layout of {self.part!r}"


# ------------------------------------------------------------------------- declarations


@dataclass
class _Rule:
    """One declared constraint on a shape: a relation ``W[x] = sign[x] * W[target[x]]``, or a
    key (entries whose ``columns`` agree are equal)."""

    label: str
    shape: Shape
    target: Tensor | None = None
    sign: Tensor | None = None
    columns: tuple[Tensor, ...] = ()

    def violation(self, w: Tensor) -> str | None:
        shape = self.shape
        if self.target is not None:
            assert self.sign is not None
            rhs = self.sign * w[self.target]
            bad = ~torch.isclose(w, rhs, rtol=_RTOL, atol=_ATOL)
            if not bad.any():
                return None
            x = _first(bad)
            y, s = int(self.target[x]), float(self.sign[x])
            zero = " (it declares that entry zero)" if x == y and s == -1 else ""
            return (
                f"{self.label} does not hold: {_entry(x, shape)} = {_num(w[x])} but sign * "
                f"{_entry(y, shape)} = {s:+g} * {_num(w[y])} = {_num(rhs[x])}{zero}"
            )
        n = w.numel()
        group = torch.zeros(n, dtype=torch.long)
        for column in self.columns:
            _, code = torch.unique(column, return_inverse=True)
            _, group = torch.unique(group * (int(_max(code)) + 1) + code, return_inverse=True)
        first = torch.full((int(_max(group)) + 1,), n, dtype=torch.long)
        first.scatter_reduce_(0, group, torch.arange(n), "amin")
        ref = first[group]
        bad = ~torch.isclose(w, w[ref], rtol=_RTOL, atol=_ATOL)
        if not bad.any():
            return None
        x = _first(bad)
        y = int(ref[x])
        values = tuple(column[x].item() for column in self.columns)
        key = values[0] if len(values) == 1 else values
        return (
            f"{self.label} does not hold: {_entry(y, shape)} = {_num(w[y])} and "
            f"{_entry(x, shape)} = {_num(w[x])} have the same key ({key!r}) but differ"
        )


def _declared_rules(part: Tie, shape: Shape, prefix: str) -> list[_Rule]:
    """The key or relations ``part`` declares on ``shape``, evaluated here (the library's
    evaluators are called only to validate, for their error messages)."""
    idx = _grids(shape)
    if part._declares() == "key":
        key = part.key(*idx)
        _evaluate_key(part, key, shape)
        parts = key if isinstance(key, tuple) else (key,)
        columns = tuple(torch.broadcast_to(torch.as_tensor(p), shape).reshape(-1) for p in parts)
        return [_Rule(f"{prefix}key", shape, columns=columns)]
    relations, signs = part.relations(*idx), part.sign(*idx)
    _evaluate_relations(part, relations, signs, shape)
    relations = [relations] if isinstance(relations, tuple) else relations
    signs = signs if isinstance(signs, list) else [signs] * len(relations)
    rules = []
    for r, (relation, sign) in enumerate(zip(relations, signs)):
        target = torch.zeros(shape, dtype=torch.long)
        stride = 1
        for d in range(len(shape) - 1, -1, -1):
            component = torch.broadcast_to(torch.as_tensor(relation[d]), shape).to(torch.long)
            component = torch.where(component < 0, component + shape[d], component)
            target += component * stride
            stride *= shape[d]
        s = torch.broadcast_to(torch.as_tensor(sign).to(torch.float64), shape).reshape(-1)
        rules.append(_Rule(f"{prefix}relation {r}", shape, target=target.reshape(-1), sign=s))
    return rules


# ------------------------------------------------------------------------------ checker


class _Checker:
    """Runs the four checks of :func:`check_tie` on one (shape, seed); caches dimensions."""

    def __init__(self, tie: Tie) -> None:
        self.tie = tie
        self._dimensions: dict[Shape, int] = {}

    def check(self, shape: Shape, seed: int) -> None:
        tie = self.tie
        where = f"check_tie: {tie!r} on shape {shape}"
        layout = _call(where, f"tie.layout({shape})", tie.layout, shape, hint=True)
        problem = _malformed(layout, shape)
        if problem:
            _fail(f"{where}: the layout is malformed: {problem}")
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(layout.n_free, generator=gen, dtype=torch.float64)
        w = _materialize(layout, theta, shape, where)

        declaration = self._declaration(shape, where)
        if declaration is not None:
            rules, declared = declaration
            dim = None
            if math.prod(shape) <= RANK_CHECK_MAX_NUMEL:
                dim = self._dimension(declared, shape, where)
            for rule in rules:
                violation = rule.violation(w)
                if violation:
                    _fail(
                        f"{where}: the layout violates the declaration: {violation} (theta drawn "
                        f"from seed {seed}).{_count_context(layout.n_free, dim)}"
                    )
            if dim is not None and layout.n_free < dim:
                _fail(
                    f"{where}: the layout over-ties (ties too much): n_free = {layout.n_free}, but "
                    f"the declared constraints have a {dim}-dimensional solution space, so some "
                    f"tensors that satisfy the declaration cannot be represented: "
                    f"{_overtie_witness(declared, layout, shape)}"
                )
            if dim is None and declared is not None:
                overtie = _overtie_by_solver(declared, layout, shape)
                if overtie:
                    _fail(f"{where}: the layout over-ties (ties too much): {overtie}")
            if dim is not None and layout.n_free > dim:
                _fail(
                    f"{where}: the layout under-ties (ties too little): n_free = {layout.n_free}, "
                    f"but the declared constraints have a {dim}-dimensional solution space: "
                    f"{layout.n_free - dim} free parameters too many (redundant, or some "
                    f"relation is not enforced)"
                )
        _check_projection(layout, theta, shape, gen, where)
        _check_gradients(layout, theta, shape, gen, where)

    def _declaration(self, shape: Shape, where: str) -> tuple[list[_Rule], Tie] | None:
        """The rules ``tie`` declares on ``shape`` and a tie ``tietorch._rank`` can write out, or
        None for a tie declared only by its layout."""
        tie = self.tie
        is_all = isinstance(tie, AllOf)
        parts = tie.ties if is_all else (tie,)
        if not is_all and _call(where, "tie._declares()", tie._declares) == "layout":
            return None
        rules: list[_Rule] = []
        declared: list[Tie] = []
        for p, part in enumerate(parts):
            prefix = f"part {p} ({part!r}): " if is_all else ""
            if _call(where, f"{prefix}_declares()", part._declares) == "layout":
                layout = _call(where, f"{prefix}layout({shape})", part.layout, shape, hint=True)
                problem = _malformed(layout, shape)
                if problem:
                    _fail(f"{where}: {prefix}its layout is malformed: {problem}")
                target, sign = _layout_relation(layout)
                label = f"{prefix}its layout (each entry = its class's first entry)"
                rules.append(_Rule(label, shape, target, sign))
                declared.append(_LayoutDeclaration(part))
            else:
                what = f"{prefix}evaluating the declaration"
                rules += _call(where, what, _declared_rules, part, shape, prefix)
                declared.append(part)
        if all(a is b for a, b in zip(declared, parts)):
            return rules, tie
        return rules, AllOf(*declared)

    def _dimension(self, declared: Tie, shape: Shape, where: str) -> int:
        if shape not in self._dimensions:
            self._dimensions[shape] = _call(
                where, "the dense rank of the declaration", solution_dimension, declared, shape
            )
        return self._dimensions[shape]


def _call(where: str, what: str, fn: Callable[..., _T], *args: Any, hint: bool = False) -> _T:
    """``fn(*args)``; an exception from the user's code becomes an AssertionError with context."""
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as error:
        if _raised_by_tie_layout_constructor(error):
            message = (
                f"{where}: the layout is malformed: {what} built a TieLayout that its "
                f"constructor refuses: {error}"
            )
        else:
            extra = ""
            if hint:
                extra = (
                    ". If the tie does not apply to this shape, make its check_shape refuse it "
                    "(or pass shapes= to check_tie)"
                )
            message = f"{where}: {what} raised {type(error).__name__}: {error}{extra}"
        raise AssertionError(message) from error


def _raised_by_tie_layout_constructor(error: Exception) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is TieLayout.__init__.__code__


def _count_context(n_free: int, dim: int | None) -> str:
    if dim is None:
        return ""
    if n_free > dim:
        return (
            f" The layout has n_free = {n_free} but the declared constraints have a "
            f"{dim}-dimensional solution space: it ties too little (under-ties)."
        )
    if n_free == dim:
        return (
            f" n_free = {n_free} is the dimension of the declared solution space, so the layout "
            f"ties the wrong entries together, or with the wrong signs."
        )
    return (
        f" The layout has n_free = {n_free}, less than the dimension {dim} of the declared "
        f"solution space: it ties the wrong entries and too many of them."
    )


def _overtie_witness(declared: Tie, layout: TieLayout, shape: Shape) -> str:
    """Two entries the layout ties (or one it zeroes) that the declaration leaves free."""
    c = constraint_matrix(declared, shape)
    n = math.prod(shape)
    if c.size:
        _, s, vt = np.linalg.svd(c)
        rank = int((s > s.max(initial=0) * max(c.shape) * np.finfo(float).eps).sum())
        basis = vt[rank:].T
    else:
        basis = np.eye(n)
    v = torch.from_numpy(basis @ np.random.default_rng(0).standard_normal(basis.shape[1]))
    index, _, live = _flat_parts(layout)
    tol = 1e-8 * (1 + _max(v.abs()))
    zeroed = ~live & (v.abs() > tol)
    if zeroed.any():
        x = _first(zeroed)
        return f"the layout forces {_entry(x, shape)} to zero, the declaration does not"
    target, relative = _layout_relation(layout)
    off = live & ((v - relative * v[target]).abs() > tol)
    if not off.any():
        return "(no single pair of entries found)"
    x = _first(off)
    y, k = int(target[x]), int(index[x])
    return (
        f"the layout ties {_entry(x, shape)} = {float(relative[x]):+g} * {_entry(y, shape)} "
        f"(both read free parameter {k}), which the declaration does not impose"
    )


def _overtie_by_solver(declared: Tie, layout: TieLayout, shape: Shape) -> str | None:
    """On shapes too large for the dense rank: compare with the library's solve of the
    declaration (independent of a hand-written layout). Under-tying needs no such help: it
    always breaks a declared relation, which the rules check directly."""
    n = math.prod(shape)
    ref_index, ref_n_free, ref_sign = solve(n, declared._constraints(shape))
    index, _, live = _flat_parts(layout)
    ref_live = torch.ones(n, dtype=torch.bool) if ref_sign is None else ref_sign != 0
    zeroed = ~live & ref_live
    if zeroed.any():
        return f"it forces {_entry(_first(zeroed), shape)} to zero, the declaration does not"
    if layout.n_free >= ref_n_free:
        return None
    # Some free parameter serves entries of two declared classes: name two such entries.
    first_ref = torch.full((max(layout.n_free, 1),), -1, dtype=torch.long)
    first_ref[index[live].flip(0)] = ref_index[live].flip(0)  # a declared class per parameter
    mixed = live & (first_ref[index] != ref_index)
    x = _first(mixed)
    y = _first(live & (index == index[x]) & (ref_index == first_ref[index[x]]))
    return (
        f"n_free = {layout.n_free}, but the declared constraints leave {ref_n_free} free "
        f"(counted by tietorch's solver, as the shape has more than {RANK_CHECK_MAX_NUMEL} "
        f"entries); it ties {_entry(x, shape)} and {_entry(y, shape)} (both read free "
        f"parameter {int(index[x])}), which the declaration does not impose"
    )


def _materialize(layout: TieLayout, theta: Tensor, shape: Shape, where: str) -> Tensor:
    w = _call(where, "layout.materialize(theta)", layout.materialize, theta)
    if not isinstance(w, Tensor) or tuple(w.shape) != shape:
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        _fail(f"{where}: the layout is malformed: materialize(theta) gave {got}, not {shape}")
    index, sign, _ = _flat_parts(layout)
    expected = (
        theta[index.clamp(0, layout.n_free - 1)] * sign if layout.n_free else torch.zeros_like(sign)
    )
    differ = ~torch.isclose(w.reshape(-1).to(torch.float64), expected, rtol=_RTOL, atol=_ATOL)
    if differ.any():
        x = _first(differ)
        _fail(
            f"{where}: the layout is malformed: materialize(theta) gives {_entry(x, shape)} = "
            f"{_num(w.reshape(-1)[x])}, but theta[index] * sign = {_num(expected[x])}"
        )
    return w.reshape(-1).to(torch.float64)


def _project(layout: TieLayout, w: Tensor, where: str) -> Tensor:
    p = _call(where, "layout.project(W)", layout.project, w)
    if not isinstance(p, Tensor) or tuple(p.shape) != (layout.n_free,):
        got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        _fail(f"{where}: project(W) gave {got}, not a free vector of shape ({layout.n_free},)")
    return p.to(torch.float64)


def _check_projection(
    layout: TieLayout, theta: Tensor, shape: Shape, gen: torch.Generator, where: str
) -> None:
    n_free = layout.n_free
    back = _project(layout, layout.materialize(theta), where)
    differ = ~torch.isclose(back, theta, rtol=1e-9, atol=1e-9)
    if differ.any():
        k = _first(differ)
        _fail(
            f"{where}: project(materialize(theta)) does not give theta back: free parameter {k} "
            f"is {_num(back[k])}, expected {_num(theta[k])}"
        )
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    pv = layout.materialize(_project(layout, v, where))
    residual = _class_sums(layout, v - pv)
    scale = 1e-9 * (1 + _max(v.abs())) * max(1, v.numel())
    bad = residual.abs() > scale
    if bad.any():
        k = _first(bad)
        _fail(
            f"{where}: project() is not the orthogonal projection: the residual "
            f"V - materialize(project(V)) has signed sum {_num(residual[k])} (not 0) over the "
            f"entries of free parameter {k}"
        )
    ppv = layout.materialize(_project(layout, pv, where))
    differ = ~torch.isclose(ppv, pv, rtol=1e-9, atol=1e-9)
    if differ.any():
        x = _first(differ.reshape(-1))
        _fail(
            f"{where}: the projection is not idempotent: projecting P = materialize(project(V)) "
            f"again changes {_entry(x, shape)} from {_num(pv.reshape(-1)[x])} to "
            f"{_num(ppv.reshape(-1)[x])} (n_free = {n_free})"
        )


def _check_gradients(
    layout: TieLayout, theta: Tensor, shape: Shape, gen: torch.Generator, where: str
) -> None:
    if layout.n_free == 0:
        return
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = theta.detach().clone().requires_grad_(True)
    w = layout.materialize(t)
    if not w.requires_grad:
        _fail(f"{where}: no gradient reaches theta: materialize(theta) is detached from theta")
    (w * r).sum().backward()
    grad = t.grad
    if grad is None:
        _fail(f"{where}: no gradient reaches theta through materialize(theta)")
    expected = _class_sums(layout, r)
    zero = grad == 0
    if zero.any():
        k = _first(zero)
        _fail(
            f"{where}: free parameter {k} gets no gradient: d/dtheta of sum(W * R) is 0 for a "
            f"random R (expected {_num(expected[k])})"
        )
    differ = ~torch.isclose(grad, expected, rtol=1e-9, atol=1e-12)
    if differ.any():
        k = _first(differ)
        _fail(
            f"{where}: wrong gradient for free parameter {k}: d/dtheta of sum(W * R) is "
            f"{_num(grad[k])}, but the signed sum of R over its entries is {_num(expected[k])}"
        )

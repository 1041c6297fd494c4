"""``check_tie``: a tie's layout against its own declaration, over many shapes, with Hypothesis.

The orchestration: which shapes each example checks, the Hypothesis run, the per-shape checks
in order, and the :class:`~tietorch.testing.CheckReport` of what was checked. The independent
references live in ``_oracle``, the wording of failures in ``_diagnosis``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from .._rank import solution_dimension
from .._tie import AllOf, Tie, TieLayout
from ..errors import ArgumentError, ShapeError, TieTypeError
from ._diagnosis import _call, _count_context, _entry, _fail, _first, _max, _num
from ._oracle import (
    _ATOL,
    _RTOL,
    RANK_CHECK_MAX_NUMEL,
    SolverReference,
    _class_sums,
    _declared_rules,
    _flat_parts,
    _layout_relation,
    _LayoutDeclaration,
    _malformed,
    _overtie_by_solver,
    _overtie_witness,
    _Rule,
    _solver_reference,
)
from ._report import CheckReport, Declaration, Minimality, ShapeReport
from .strategies import _as_shape, _refusal, _shapes_by_rank

__all__ = ["RANK_CHECK_MAX_NUMEL", "SHAPES_PER_EXAMPLE", "check_tie"]

Shape = tuple[int, ...]

#: Each example checks this many shapes, one from each size stratum of the shapes on offer
#: (equal-count slices of them sorted by number of entries), so that every example reaches the
#: largest shapes as well as the smallest.
SHAPES_PER_EXAMPLE = 4

# Hypothesis's "explain" phase would only point at lines of this module: skip it.
_PHASES = tuple(phase for phase in Phase if phase.name != "explain")


def check_tie(
    tie: Tie,
    shapes: SearchStrategy[Sequence[int]] | Iterable[Sequence[int]] | None = None,
    max_examples: int = 40,
    *,
    seed: int | None = None,
) -> CheckReport:
    """Property-test ``tie`` with Hypothesis; raise ``AssertionError`` on a counterexample.

    Each example checks :data:`SHAPES_PER_EXAMPLE` shapes spread over the sizes on offer (one
    from each equal-count slice of them sorted by size: a small, two medium and a large one,
    with the default shapes) with a random free vector ``theta`` (float64). On each shape:

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
            out; each example draws :data:`SHAPES_PER_EXAMPLE` of them), an iterable of shapes
            (all are checked in the first example, then Hypothesis draws among them; a refused
            one is an error), or None: every shape of 1 to 4 dims of sizes 1 to 5 that
            ``check_shape`` accepts and the declaration evaluates on (those of
            :func:`tietorch.testing.strategies.shapes_for`; a ``ValueError`` asks for
            ``shapes=`` when none fits).
        max_examples: how many examples Hypothesis tries (each: :data:`SHAPES_PER_EXAMPLE`
            shapes and a theta). The default, 40, checks 160 shapes, and catches a layout wrong
            on 25 of the 775 default shapes of a matrix tie in every one of 20 seeded runs.
        seed: seeds Hypothesis's search (``hypothesis.seed``), for a reproducible run.

    Returns:
        A :class:`~tietorch.testing.CheckReport`: the shapes checked, how many examples ran, and
        per shape whether the count of free parameters was proven minimal by dense rank or
        checked against tietorch's solver.

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
        >>> report = check_tie(SymmetricFlip(), max_examples=10)
        >>> report.declaration, report.examples
        ('relations', 10)
        >>> _ = check_tie(Toeplitz(), shapes=[(3, 3), (2, 5), (2, 3, 4)], max_examples=5)
    """
    if not isinstance(tie, Tie):
        raise TieTypeError(f"check_tie: expected a tietorch.Tie, got {type(tie).__name__}")
    if isinstance(max_examples, bool) or int(max_examples) < 1:
        raise ArgumentError(f"check_tie: max_examples must be >= 1, got {max_examples!r}")
    if _in_hypothesis_test():
        raise RuntimeError(
            "check_tie runs its own Hypothesis search (@given), and Hypothesis cannot nest @given: "
            "call check_tie from a plain test function, not inside a @given test"
        )
    strategy, every_listed = _shape_batches(tie, shapes)
    checker = _Checker(tie)

    @settings(
        max_examples=int(max_examples),
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
        phases=_PHASES,
    )
    @given(batch=strategy, seed=st.integers(0, 2**32 - 1))
    def check_tie_example(batch: tuple[Shape, ...], seed: int) -> None:
        checker.examples += 1
        for shape in dict.fromkeys(batch):  # smallest first
            checker.check(shape, seed)

    test = check_tie_example
    if every_listed is not None:  # every listed shape at least once
        test = example(batch=every_listed, seed=0)(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()
    return checker.report()


# ------------------------------------------------------------------------------- shapes


def _strata(shapes: list[Shape]) -> SearchStrategy[tuple[Shape, ...]]:
    """One shape from each of :data:`SHAPES_PER_EXAMPLE` equal-count slices of ``shapes`` sorted
    by number of entries (each slice shrinks towards its smallest shape)."""
    ordered = sorted(set(shapes), key=lambda s: (math.prod(s), len(s), s))
    k = min(SHAPES_PER_EXAMPLE, len(ordered))
    bounds = [round(i * len(ordered) / k) for i in range(k + 1)]
    return st.tuples(*(st.sampled_from(ordered[a:b]) for a, b in itertools.pairwise(bounds)))


def _shape_batches(
    tie: Tie, shapes: SearchStrategy[Sequence[int]] | Iterable[Sequence[int]] | None
) -> tuple[SearchStrategy[tuple[Shape, ...]], tuple[Shape, ...] | None]:
    """The strategy of each example's shapes, and the listed shapes (to check all once)."""
    if shapes is None:
        by_rank = _shapes_by_rank(tie, max_side=5, max_dims=4)
        return _strata([s for rank in by_rank.values() for s in rank]), None
    if isinstance(shapes, SearchStrategy):
        accepted = shapes.map(_as_shape).filter(lambda s: _refusal(tie, s) is None)
        batch = st.lists(accepted, min_size=SHAPES_PER_EXAMPLE, max_size=SHAPES_PER_EXAMPLE)
        return batch.map(lambda b: tuple(sorted(b, key=math.prod))), None
    if isinstance(shapes, (str, bytes)):
        raise TieTypeError(f"check_tie: shapes must be shapes, got {shapes!r}")
    listed = list(shapes)
    if any(isinstance(s, (int, np.integer)) for s in listed):
        raise TieTypeError(
            f"check_tie: shapes= takes several shapes, e.g. shapes=[{tuple(listed)}], "
            f"got the single shape {tuple(listed)}"
        )
    if not listed:
        raise ArgumentError("check_tie: shapes= is empty")
    unique = sorted({_as_shape(s) for s in listed}, key=lambda s: (math.prod(s), len(s), s))
    for shape in unique:
        error = _refusal(tie, shape)
        if error is not None:
            raise ShapeError(
                f"check_tie: {tie!r} refuses shape {shape} ({type(error).__name__}: {error}); "
                f"pass shapes its check_shape accepts"
            )
    return _strata(unique), tuple(unique)


def _in_final_run() -> bool:
    """Whether Hypothesis is replaying the shrunk failing example whose error it will raise
    (the only run whose message is read), or the answer is unknown (then: True)."""
    try:
        from hypothesis.control import current_build_context

        return bool(current_build_context().is_final)
    except Exception:  # not in a test, or Hypothesis changed: compute everything
        return True


def _witness_if_final(declared: Tie, layout: TieLayout, shape: Shape, dimension: int) -> str:
    """The over-tie witness (an eigendecomposition) only for the message that is raised: while
    Hypothesis shrinks, each failing attempt would otherwise pay for one."""
    if not _in_final_run():
        return "(a witness is named when the shrunk example is replayed)"
    return _overtie_witness(declared, layout, shape, dimension)


def _in_hypothesis_test() -> bool:
    try:
        from hypothesis import currently_in_test_context
    except ImportError:  # older Hypothesis
        try:
            from hypothesis.control import currently_in_test_context
        except ImportError:
            return False
    return bool(currently_in_test_context())


# ------------------------------------------------------------------------------ checker


class _Checker:
    """Runs the four checks of :func:`check_tie` on one (shape, seed); caches dimensions and
    records what it checked for the report."""

    def __init__(self, tie: Tie) -> None:
        self.tie = tie
        self.examples = 0
        self._dimensions: dict[Shape, int] = {}
        self._declarations: dict[Shape, tuple[list[_Rule], Tie] | None] = {}
        self._references: dict[Shape, SolverReference] = {}
        self._checked: dict[Shape, tuple[int, Minimality, int]] = {}

    def report(self) -> CheckReport:
        shapes = sorted(self._checked, key=lambda s: (math.prod(s), len(s), s))
        return CheckReport(
            tie=repr(self.tie),
            declaration=_declaration_kind(self.tie),
            examples=self.examples,
            shapes=tuple(ShapeReport(s, *self._checked[s]) for s in shapes),
        )

    def check(self, shape: Shape, seed: int) -> None:
        n_free, minimality = self._check(shape, seed)
        _, _, count = self._checked.get(shape, (n_free, minimality, 0))
        self._checked[shape] = (n_free, minimality, count + 1)

    def _check(self, shape: Shape, seed: int) -> tuple[int, Minimality]:
        tie = self.tie
        minimality: Minimality = "not checked"
        where = f"check_tie: {tie!r} on shape {shape}"
        layout = _call(where, f"tie.layout({shape})", tie.layout, shape, hint=True)
        problem = _malformed(layout, shape)
        if problem:
            _fail(f"{where}: the layout is malformed: {problem}")
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(layout.n_free, generator=gen, dtype=torch.float64)
        w = _materialize(layout, theta, shape, where)

        if shape not in self._declarations:  # the declaration depends on the shape only
            self._declarations[shape] = self._declaration(shape, where)
        declaration = self._declarations[shape]
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
                    f"{_witness_if_final(declared, layout, shape, dim)}"
                )
            if dim is None and declared is not None:
                overtie = _overtie_by_solver(self._reference(declared, shape), layout, shape)
                if overtie:
                    _fail(f"{where}: the layout over-ties (ties too much): {overtie}")
            if dim is not None and layout.n_free > dim:
                _fail(
                    f"{where}: the layout under-ties (ties too little): n_free = {layout.n_free}, "
                    f"but the declared constraints have a {dim}-dimensional solution space: "
                    f"{layout.n_free - dim} free parameters too many (redundant, or some "
                    f"relation is not enforced)"
                )
            minimality = "dense rank" if dim is not None else "solver"
        _check_projection(layout, theta, shape, gen, where)
        _check_gradients(layout, theta, shape, gen, where)
        return int(layout.n_free), minimality

    def _declaration(self, shape: Shape, where: str) -> tuple[list[_Rule], Tie] | None:
        """The rules ``tie`` declares on ``shape`` and a tie ``tietorch._rank`` can write out, or
        None for a tie declared only by its layout."""
        tie = self.tie
        is_all = isinstance(tie, AllOf)
        parts = tie.ties if isinstance(tie, AllOf) else (tie,)
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

    def _reference(self, declared: Tie, shape: Shape) -> SolverReference:
        if shape not in self._references:
            self._references[shape] = _solver_reference(declared, shape)
        return self._references[shape]

    def _dimension(self, declared: Tie, shape: Shape, where: str) -> int:
        if shape not in self._dimensions:
            self._dimensions[shape] = _call(
                where, "the dense rank of the declaration", solution_dimension, declared, shape
            )
        return self._dimensions[shape]


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


def _declaration_kind(tie: Tie) -> Declaration:
    kind = tie._declares()
    if kind not in ("key", "relations", "all of", "layout"):
        raise AssertionError(f"check_tie: {tie!r}._declares() returned {kind!r}")
    return cast(Declaration, kind)

"""check_tie's independent references: the well-formedness rules of a layout, the declared key
or relations evaluated directly on index grids (not through the solver), the class sums of a
layout written with ``index_add``, and the witnesses of an over-tie (a random solution of the
dense constraint system, or tietorch's solve of the declaration on shapes too large for it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._rank import constraint_matrix, one_thread
from .._solver import solve
from .._tie import Tie, TieLayout, _evaluate_key, _evaluate_relations, _grids, _layout_as_relation
from ._diagnosis import _entry, _first, _max, _num

__all__: list[str] = []

Shape = tuple[int, ...]

#: The minimality check (dense rank of the declared constraint system) runs on shapes with at
#: most this many entries; larger shapes are compared with tietorch's solve of the declaration.
RANK_CHECK_MAX_NUMEL = 400
_RTOL, _ATOL = 1e-9, 1e-12  # theta is float64 and the gather copies it: any tolerance works


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


def _overtie_witness(declared: Tie, layout: TieLayout, shape: Shape, dimension: int) -> str:
    """Two entries the layout ties (or one it zeroes) that the declaration leaves free, from a
    random solution of the declared constraints ``C w = 0``, whose solution space has
    ``dimension`` dimensions: the eigenvectors of the ``dimension`` smallest eigenvalues of
    ``C^T C`` span it (cheaper than the SVD of ``C``, which has more rows than columns)."""
    c = torch.from_numpy(constraint_matrix(declared, shape))
    n = math.prod(shape)
    with one_thread():  # see one_thread: a threaded eigh of this size only waits
        if c.numel():
            _, vectors = torch.linalg.eigh(c.T @ c)  # eigenvalues ascending
            basis = vectors[:, :dimension]
        else:
            basis = torch.eye(n, dtype=torch.float64)
        mix = np.random.default_rng(0).standard_normal(basis.shape[1])
        v = basis @ torch.from_numpy(mix)
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


SolverReference = tuple[Tensor, int, "Tensor | None"]


def _solver_reference(declared: Tie, shape: Shape) -> SolverReference:
    """tietorch's solve of the declaration on ``shape``: ``(index, n_free, sign)``."""
    return solve(math.prod(shape), declared._constraints(shape))


def _overtie_by_solver(reference: SolverReference, layout: TieLayout, shape: Shape) -> str | None:
    """On shapes too large for the dense rank: compare with the library's solve of the
    declaration, ``reference`` (independent of a hand-written layout). Under-tying needs no such
    help: it always breaks a declared relation, which the rules check directly."""
    n = math.prod(shape)
    ref_index, ref_n_free, ref_sign = reference
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

"""Computing the equivalence classes of a tie: vectorized connected components.

A tie declares edges between the entries of a tensor: ``W[x] = s * W[g(x)]`` (relations) or
"equal keys share one value". The classes are the connected components of that graph. Signs are
handled on a *doubled* graph where each entry ``x`` has two nodes, ``+x`` (id ``x``) and ``-x``
(id ``x + n``): ``W[x] = -W[y]`` joins ``+x`` with ``-y`` and ``-x`` with ``+y``. An entry is forced
to zero exactly when its two nodes land in one component (``W[x] = -W[x]``).

The components are found by hooking and contraction, in the spirit of Shiloach-Vishkin and
FastSV (Zhang, Azad & Hu, 2020): every round hooks each *root* onto its smallest neighbouring
root (``scatter_reduce_`` with ``amin``), compresses the forest to stars by pointer jumping, and
contracts the edges onto the roots, dropping those that became internal. Hooking roots is what
keeps the number of rounds logarithmic: plain min-label propagation needs as many rounds as the
longest orbit (a cyclic shift along an axis of 4096 is one orbit of 4096). Everything is
whole-tensor torch ops: no Python loop over entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__: list[str] = []


@dataclass(frozen=True)
class _KeyConstraint:
    """Entries with equal keys share one value. ``parts``: flat tensors, one per key component."""

    parts: tuple[Tensor, ...]


@dataclass(frozen=True)
class _RelationConstraint:
    """``W[x] = sign[x] * W[target[x]]`` for every flat index ``x``. ``sign`` None means +1."""

    target: Tensor
    sign: Tensor | None


def _key_inverse(parts: tuple[Tensor, ...], n: int) -> tuple[Tensor, int]:
    """Class id per entry (``[0, n_classes)``, in order of key value) for a multi-part key."""
    if not parts:
        return torch.zeros(n, dtype=torch.long), min(n, 1)
    inverse: Tensor | None = None
    count = 1
    for part in parts:
        values, part_inverse = torch.unique(part, return_inverse=True)
        combined = part_inverse if inverse is None else inverse * len(values) + part_inverse
        # Re-compact after each part so the combined code never overflows int64.
        values, inverse = torch.unique(combined, return_inverse=True)
        count = len(values)
    assert inverse is not None
    return inverse, count


def _first_occurrence(labels: Tensor, n_labels: int) -> Tensor:
    """For each label in ``[0, n_labels)``, the smallest flat index that carries it."""
    first = torch.full((n_labels,), labels.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, labels, torch.arange(labels.numel()), "amin")


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root (a forest of stars)."""
    while True:
        grandparent = parent.index_select(0, parent)
        if torch.equal(grandparent, parent):
            return parent
        parent = grandparent


def connected_components(n_nodes: int, src: Tensor, dst: Tensor) -> Tensor:
    """Label every node with the smallest node id of its connected component.

    ``src``/``dst`` are int64 edge endpoints (undirected; self-loops allowed).

    >>> connected_components(5, torch.tensor([0, 3]), torch.tensor([2, 4])).tolist()
    [0, 1, 0, 3, 3]
    """
    parent = torch.arange(n_nodes)
    keep = src != dst
    u, v = src[keep], dst[keep]
    while u.numel():
        # Invariant: u, v are roots. Each root hooks onto its smallest neighbouring root, so
        # labels only decrease and the minimum of a component stays a root for ever.
        parent.scatter_reduce_(0, u, v, "amin")
        parent.scatter_reduce_(0, v, u, "amin")
        parent = _compress(parent)
        # Contract: an edge now joins the roots of its endpoints; edges inside a star are done.
        u, v = parent.index_select(0, u), parent.index_select(0, v)
        keep = u != v
        u, v = u[keep], v[keep]
    return parent


def solve(
    n: int, constraints: list[_KeyConstraint | _RelationConstraint]
) -> tuple[Tensor, int, Tensor | None]:
    """Classes of the entries ``0..n-1`` under all ``constraints``.

    Returns ``(index, n_free, sign)`` (flat): free parameters are numbered by the smallest flat
    index in their class, and that entry has sign +1. ``sign`` is None when no relation carries a
    sign, otherwise an int8 tensor of +1/-1/0 (0: forced to zero).
    """
    if len(constraints) == 1 and isinstance(constraints[0], _KeyConstraint):
        inverse, count = _key_inverse(constraints[0].parts, n)
        order = torch.argsort(_first_occurrence(inverse, count))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(count)
        return rank[inverse], count, None

    arange = torch.arange(n)
    plus_src: list[Tensor] = []
    plus_dst: list[Tensor] = []
    minus_src: list[Tensor] = []
    minus_dst: list[Tensor] = []
    for constraint in constraints:
        if isinstance(constraint, _KeyConstraint):
            inverse, count = _key_inverse(constraint.parts, n)
            plus_src.append(arange)
            plus_dst.append(_first_occurrence(inverse, count)[inverse])
        elif constraint.sign is None:
            plus_src.append(arange)
            plus_dst.append(constraint.target)
        else:
            negative = constraint.sign < 0
            plus_src.append(arange[~negative])
            plus_dst.append(constraint.target[~negative])
            minus_src.append(arange[negative])
            minus_dst.append(constraint.target[negative])

    if not minus_src:
        labels = connected_components(n, torch.cat(plus_src), torch.cat(plus_dst))
        unique, index = torch.unique(labels, return_inverse=True)
        return index, len(unique), None

    # Doubled graph: +x has id x, -x has id x + n.
    ps, pd = torch.cat(plus_src), torch.cat(plus_dst)
    ms, md = torch.cat(minus_src), torch.cat(minus_dst)
    src = torch.cat([ps, ps + n, ms, ms + n])
    dst = torch.cat([pd, pd + n, md + n, md])
    labels = connected_components(2 * n, src, dst)
    a, b = labels[:n], labels[n:]
    nonzero = a != b
    sign = torch.where(a < b, 1, -1).to(torch.int8)
    sign[~nonzero] = 0
    index = torch.zeros(n, dtype=torch.long)
    unique, compact = torch.unique(torch.minimum(a, b)[nonzero], return_inverse=True)
    index[nonzero] = compact
    return index, len(unique), sign

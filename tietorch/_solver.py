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
    """Entries ``offset .. offset+size-1`` with equal keys share one value.

    ``parts``: flat tensors of length ``size``, one per key component (none: one class).
    """

    parts: tuple[Tensor, ...]
    size: int
    offset: int = 0

    def shifted(self, by: int) -> _KeyConstraint:
        return _KeyConstraint(self.parts, self.size, self.offset + by)


@dataclass(frozen=True)
class _RelationConstraint:
    """``W[offset + x] = sign[x] * W[target[x]]`` for ``x < len(target)``; None sign is +1.

    ``target`` holds ids in the whole index space (several tensors may share one space, each at
    its own offset).
    """

    target: Tensor
    sign: Tensor | None
    offset: int = 0

    def shifted(self, by: int) -> _RelationConstraint:
        return _RelationConstraint(self.target + by, self.sign, self.offset + by)


def _key_codes(parts: tuple[Tensor, ...], n: int) -> tuple[Tensor, int]:
    """An int64 code per entry, equal exactly when all key parts are equal, in ``[0, bound)``.

    Integer parts are packed in mixed radix (no sort); other dtypes, or radices too large to
    pack, are compacted with ``torch.unique`` first.
    """
    code = torch.zeros(n, dtype=torch.long)
    bound = 1
    for part in parts:
        if part.dtype.is_floating_point or part.dtype.is_complex or part.dtype == torch.bool:
            values, part = torch.unique(part, return_inverse=True)
            low, radix = 0, len(values)
        else:
            low = int(part.min()) if n else 0
            radix = (int(part.max()) - low + 1) if n else 1
        if bound * radix > 4 * n + 64:  # keep the code dense enough to index a table with it
            values, code = torch.unique(code, return_inverse=True)
            bound = len(values)
            if bound * radix > 4 * n + 64:
                values, part = torch.unique(part, return_inverse=True)
                low, radix = 0, len(values)
        code = code * radix + (part.to(torch.long) - low)
        bound *= radix
    if bound > 4 * n + 64:  # the last part's radix made the code sparse: compact it
        values, code = torch.unique(code, return_inverse=True)
        bound = len(values)
    return code, bound


def _first_occurrence(labels: Tensor, n_labels: int) -> Tensor:
    """For each label in ``[0, n_labels)``, the smallest flat index that carries it (or n)."""
    first = torch.full((n_labels,), labels.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, labels, torch.arange(labels.numel()), "amin")


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root (a forest of stars)."""
    while True:
        grandparent = parent.index_select(0, parent)
        if torch.equal(grandparent, parent):
            return parent
        parent = grandparent


def _hook_and_contract(parent: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Finish the components of a star forest ``parent`` plus the edges ``u - v`` between roots."""
    keep = u != v
    u, v = u[keep], v[keep]
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


def connected_components(n_nodes: int, src: Tensor, dst: Tensor) -> Tensor:
    """Label every node with the smallest node id of its connected component.

    ``src``/``dst`` are int64 edge endpoints (undirected; self-loops allowed).

    >>> connected_components(5, torch.tensor([0, 3]), torch.tensor([2, 4])).tolist()
    [0, 1, 0, 3, 3]
    """
    return _hook_and_contract(torch.arange(n_nodes), src, dst)


def components_of_maps(n_nodes: int, maps: list[tuple[int, Tensor]]) -> Tensor:
    """Like :func:`connected_components` for the edges ``offset + x  -  t[x]`` of each map.

    Every relation and key gives one edge per entry it covers, so the first round needs no edge
    list: hooking is an elementwise minimum, and the contracted edges are ``parent[offset + x]``
    to ``parent[t[x]]``.
    """
    nodes = torch.arange(n_nodes)
    parent = nodes.clone()
    for offset, target in maps:
        segment = parent[offset : offset + len(target)]
        torch.minimum(segment, target, out=segment)
        parent.scatter_reduce_(0, target, nodes[offset : offset + len(target)], "amin")
    parent = _compress(parent)
    u = torch.cat([parent[offset : offset + len(target)] for offset, target in maps])
    v = torch.cat([parent.index_select(0, target) for _, target in maps])
    return _hook_and_contract(parent, u, v)


def _rank_of_representatives(rep: Tensor, live: Tensor | None) -> tuple[Tensor, int]:
    """Number classes by their representative (smallest entry): ``index[x] = rank of rep[x]``."""
    is_rep = rep == torch.arange(rep.numel())
    if live is not None:
        is_rep &= live
    rank = torch.cumsum(is_rep, 0) - 1
    n_free = int(rank[-1]) + 1 if rep.numel() else 0
    return rank.index_select(0, rep), n_free


def solve(
    n: int, constraints: list[_KeyConstraint | _RelationConstraint]
) -> tuple[Tensor, int, Tensor | None]:
    """Classes of the entries ``0..n-1`` under all ``constraints``.

    Returns ``(index, n_free, sign)`` (flat): free parameters are numbered by the smallest flat
    index in their class, and that entry has sign +1. ``sign`` is None when no relation carries a
    sign, otherwise an int8 tensor of +1/-1/0 (0: forced to zero).
    """
    maps: list[tuple[int, Tensor]] = []
    signed = any(isinstance(c, _RelationConstraint) and c.sign is not None for c in constraints)
    for constraint in constraints:
        if isinstance(constraint, _KeyConstraint):
            code, bound = _key_codes(constraint.parts, constraint.size)
            target = _first_occurrence(code, bound).index_select(0, code)
            if len(constraints) == 1 and constraint.size == n:
                # every entry already points at its representative
                index, n_free = _rank_of_representatives(target, None)
                return index, n_free, None
            target = target + constraint.offset
        else:
            target = constraint.target
        offset = constraint.offset
        if not signed:
            maps.append((offset, target))
            continue
        # Doubled graph: +x has id x, -x has id x + n; W[x] = -W[y] joins +x with -y.
        flip = (
            0
            if isinstance(constraint, _KeyConstraint) or constraint.sign is None
            else (constraint.sign < 0).to(torch.long) * n
        )
        maps.append((offset, target + flip))
        maps.append((n + offset, target + n - flip))

    if not signed:
        labels = components_of_maps(n, maps)
        index, n_free = _rank_of_representatives(labels, None)
        return index, n_free, None

    labels = components_of_maps(2 * n, maps)
    a, b = labels[:n], labels[n:]
    # The class of x is the pair {component of +x, component of -x}; its smallest node is the
    # smallest entry of the class (a positive node), which gets sign +1.
    live = a != b
    sign = torch.where(a < b, 1, -1).to(torch.int8)
    sign[~live] = 0
    index, n_free = _rank_of_representatives(torch.minimum(a, b), live)
    index[~live] = 0
    return index, n_free, sign

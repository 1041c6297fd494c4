"""Computing the equivalence classes of a tie: vectorized connected components with parity.

A tie declares edges between the entries of a tensor: ``W[x] = s * W[g(x)]`` (relations) or
"equal keys share one value". The classes are the connected components of that graph, and each
entry's sign relative to its class is the *parity* of the path that joins it to the class's
representative. An entry is forced to zero exactly when its component holds a cycle of odd
parity (then ``W[x] = -W[x]``).

The components are found by hooking and contraction, in the spirit of Shiloach-Vishkin and
FastSV (Zhang, Azad & Hu, 2020): every round hooks each *root* onto its smallest neighbouring
root (``scatter_reduce_`` with ``amin``), compresses the forest to stars by pointer jumping, and
contracts the edges onto the roots, dropping those that became internal. Hooking roots is what
keeps the number of rounds logarithmic: plain min-label propagation needs as many rounds as the
longest orbit (a cyclic shift along an axis of 4096 is one orbit of 4096). Everything is
whole-tensor torch ops: no Python loop over entries.

Signs ride along as a parity per node (``W[x] = (-1)**parity[x] * W[parent[x]]``): pointer
jumping composes parities with one XOR, and contracting an edge composes its parity with both
endpoints'. So a signed tie costs one graph of ``n`` nodes, like an unsigned one, instead of a
doubled graph of ``2n`` nodes (``+x`` and ``-x``) with twice the edges.
"""

from __future__ import annotations

from collections.abc import Callable
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


class _Forest:
    """A forest over ``n`` nodes, with a parity per node when signs are tracked.

    Each node holds one integer ``code``: its parent, or, when ``signed``, ``2 * parent +
    parity`` with ``W[x] = (-1)**parity * W[parent]``. An edge is stored the same way: its near
    end a node id, its far end a code (``2 * node + parity`` when signed). With the parity in
    the low bit, ``amin`` over codes still picks the smallest neighbouring root, and pointer
    jumping composes parities with one XOR, so a signed solve runs the same passes over the same
    ``n`` nodes as an unsigned one (an unsigned forest skips the bit work altogether).

    ``roots`` lists the roots after the last :meth:`settle` (None before the first). Between
    rounds only roots hook, so only they need pointer jumping: the other nodes keep a chain of
    at most one link per round, resolved once by :meth:`compress` at the end. That keeps each
    round's cost proportional to the roots and edges left, which shrink geometrically.
    """

    __slots__ = ("code", "hooked", "roots", "signed")

    def __init__(self, n_nodes: int, signed: bool) -> None:
        self.signed = signed
        self.code: Tensor = self.far(torch.arange(n_nodes), None)
        self.roots: Tensor | None = None
        # per round, the roots that hooked onto another root (each then points at a root of
        # that round): what :meth:`resolve` walks back, one gather per node
        self.hooked: list[Tensor] = []

    # -- codes ---------------------------------------------------------------------------
    def far(self, nodes: Tensor, odd: Tensor | None) -> Tensor:
        """The code of an edge's far end (or a node's parent) ``nodes`` with parity ``odd``."""
        if not self.signed:
            return nodes
        # one pass (2 * nodes + odd) rather than a shift and an or: at 10^7 entries each pass
        # over an int64 tensor is ~10 ms
        return nodes << 1 if odd is None else torch.add(odd, nodes, alpha=2)

    def node(self, code: Tensor) -> Tensor:
        return code >> 1 if self.signed else code

    def jump(self, code: Tensor, via: Tensor) -> Tensor:
        """``code`` composed with ``via``, the code of its node: the grandparent, or the root
        of an edge's far end, with the parities XORed. ``via`` (a fresh gather at every call
        site) is overwritten with the result: no new full-size tensor."""
        return via.bitwise_xor_(code & 1) if self.signed else via

    # -- rounds --------------------------------------------------------------------------
    def compress(self) -> None:
        """Pointer jumping until every node points at its root (a forest of stars).

        After the first jump only the nodes whose pointer moved can still be off their root,
        so each later jump reads just those (in place: a pointer only ever moves towards its
        root, so reading a neighbour's already-moved pointer is still a valid jump).
        """
        code = self.code
        jumped = self.jump(code, code.index_select(0, self.node(code)))
        active = torch.nonzero(jumped != code).view(-1)
        self.code = code = jumped
        while active.numel():
            up = code.index_select(0, active)
            jumped = self.jump(up, code.index_select(0, self.node(up)))
            moved = jumped != up
            active, jumped = active[moved], jumped[moved]
            code.index_copy_(0, active, jumped)

    def settle(self) -> None:
        """After hooking: point every root of the last round at its new root, and list the
        roots left."""
        if self.roots is None:
            self.compress()
            nodes = torch.arange(len(self.code))
            self.roots = torch.nonzero(self.node(self.code) == nodes).view(-1)
            return
        roots, code = self.roots, self.code
        # the parent of a root of the last round is itself such a root: jumping stays in roots
        up = code.index_select(0, roots)
        while True:
            jumped = self.jump(up, code.index_select(0, self.node(up)))
            if torch.equal(jumped, up):
                break
            code.index_copy_(0, roots, jumped)
            up = jumped
        still = self.node(up) == roots
        self.hooked.append(roots[~still])
        self.roots = roots[still]

    def resolve(self) -> None:
        """After the last round: point every node at its root (what :meth:`compress` does, in
        one gather per node instead of a pass over all nodes per pointer jump).

        The roots that hooked in the last round point at final roots; those of each earlier
        round point at roots of that round, which are final once the later rounds are done: so
        the rounds are resolved last to first. Then every other node points at a root of the
        first round (a star since the first ``compress``), final by now: one pass.
        """
        code = self.code
        for nodes in reversed(self.hooked):
            up = code.index_select(0, nodes)
            code.index_copy_(0, nodes, self.jump(up, code.index_select(0, self.node(up))))
        self.hooked = []
        self.code = self.jump(code, code.index_select(0, self.node(code)))

    def hook(self, u: Tensor, v: Tensor) -> None:
        """Hook each root among the edges' ends onto its smallest neighbouring root.

        Invariant: ``u`` and ``node(v)`` are roots. Labels only decrease, so the minimum of a
        component stays a root for ever. Two edges between the same roots with different
        parities close an odd cycle: ``amin`` keeps one, the other is found on contraction.
        """
        self.code.scatter_reduce_(0, u, v, "amin")
        back = self.far(u, v & 1) if self.signed else u
        self.code.scatter_reduce_(0, self.node(v), back, "amin")

    def contract(self, edges: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The edges ``[u, v]`` moved onto the roots of their ends (after :meth:`settle`).

        Takes the list's tensors (it is emptied) and reuses them: the old edges are freed as
        soon as they are read, so the edge lists are held about twice at the peak, not four
        times (they are the solve's largest tensors)."""
        u, v = edges
        edges.clear()
        near = self.code.index_select(0, u)
        del u
        far = self.code.index_select(0, self.node(v))
        if not self.signed:
            return near, far
        far.bitwise_xor_(v.bitwise_xor_(near).bitwise_and_(1))  # parities composed, in place
        del v
        return near.bitwise_right_shift_(1), far

    def root_and_parity(self) -> tuple[Tensor, Tensor | None]:
        """After :meth:`resolve`: each node's root, and its parity (None when unsigned)."""
        if not self.signed:
            return self.code, None
        return self.code >> 1, (self.code & 1).to(torch.int8)


def _hook_and_contract(forest: _Forest, edges: list[Tensor], closed_odd: list[Tensor]) -> None:
    """Finish the components of the star forest ``forest`` plus the edges ``[u, v]`` between
    its roots (``v`` a far-end code). The list is emptied: its tensors are consumed (written
    over), so the caller keeps no reference that would hold them in memory.

    Edges that close a cycle of odd parity are the contradictions: the root each closes on is
    appended to ``closed_odd``.
    """
    u, v = edges
    edges.clear()
    while True:
        closed = u == forest.node(v)
        if forest.signed:
            closed_on_odd = closed & ((v & 1) == 1)
            if bool(closed_on_odd.any()):
                closed_odd.append(u[closed_on_odd])
        keep = torch.nonzero(~closed).view(-1)
        if not keep.numel():
            return
        if keep.numel() < u.numel():
            u, v = u.index_select(0, keep), v.index_select(0, keep)
        del keep, closed
        forest.hook(u, v)
        forest.settle()
        edges = [u, v]
        del u, v
        u, v = forest.contract(edges)


def _components(
    n_nodes: int, maps: list[tuple[int, Tensor, Tensor | None]], signed: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The components of the edges ``W[offset + x] = ±W[t[x]]``.

    ``maps`` holds ``(offset, t, odd)`` with ``odd`` a bool tensor (True: the relation has
    sign -1; None: all +1). Returns each node's root (the smallest node of its component) and,
    with ``signed``, its parity relative to the root (int8) and which roots close an odd cycle
    (their classes are forced to zero; None where none does).

    Every relation and key gives one edge per entry it covers, so the first round needs no edge
    list: hooking is an elementwise minimum, and the contracted edges are read off the forest.
    """
    forest = _Forest(n_nodes, signed)
    code = forest.code
    for offset, target, odd in maps:
        far = forest.far(target, odd)
        near = code[offset : offset + len(target)]  # a view: hooking writes into code
        torch.minimum(near, far, out=near)
        del far
        back = forest.far(torch.arange(offset, offset + len(target)), odd)
        code.scatter_reduce_(0, target, back, "amin")
        del back
    forest.settle()
    # The edges moved onto the roots, written straight into one preallocated list (no
    # per-map lists joined by a copy, no far codes kept from the first round: at 10^7 entries
    # and two maps those were 48 bytes per entry of the peak).
    total = sum(len(target) for _, target, _ in maps)
    u = torch.empty(total, dtype=torch.long)
    v = torch.empty(total, dtype=torch.long)
    start = 0
    for offset, target, odd in maps:
        size = len(target)
        near_code = forest.code[offset : offset + size]
        if not signed:
            u[start : start + size] = near_code
            torch.index_select(forest.code, 0, target, out=v[start : start + size])
        else:
            # the far end's root code, its parity composed with the edge's and the near end's
            flips = near_code & 1
            if odd is not None:
                flips.bitwise_xor_(odd)
            torch.bitwise_xor(
                forest.code.index_select(0, target), flips, out=v[start : start + size]
            )
            del flips
            torch.bitwise_right_shift(near_code, 1, out=u[start : start + size])
        start += size
    closed_odd: list[Tensor] = []
    edges = [u, v]
    del u, v
    _hook_and_contract(forest, edges, closed_odd)
    forest.resolve()
    root, parity = forest.root_and_parity()
    if not signed:
        return root, None, None
    if not closed_odd:
        return root, parity, None
    odd_root = torch.zeros(n_nodes, dtype=torch.bool)
    odd_root[root.index_select(0, torch.cat(closed_odd))] = True
    return root, parity, odd_root


def connected_components(n_nodes: int, src: Tensor, dst: Tensor) -> Tensor:
    """Label every node with the smallest node id of its connected component.

    ``src``/``dst`` are int64 edge endpoints (undirected; self-loops allowed).

    >>> connected_components(5, torch.tensor([0, 3]), torch.tensor([2, 4])).tolist()
    [0, 1, 0, 3, 3]
    """
    forest = _Forest(n_nodes, signed=False)
    forest.settle()
    _hook_and_contract(forest, [src, dst.clone()], [])  # the far ends are written over
    forest.resolve()
    return forest.code


def _rank_of_representatives(rep: Tensor, live: Tensor | None) -> tuple[Tensor, int]:
    """Number classes by their representative (smallest entry): ``index[x] = rank of rep[x]``."""
    is_rep = rep == torch.arange(rep.numel())
    if live is not None:
        is_rep &= live
    rank = torch.cumsum(is_rep, 0) - 1
    n_free = int(rank[-1]) + 1 if rep.numel() else 0
    return rank.index_select(0, rep), n_free


def pair_classes(
    nodes: Tensor, paired: Callable[[Tensor], Tensor], negative: Tensor | None
) -> tuple[Tensor, int, Tensor | None]:
    """The classes of ``W[x] = s[x] * W[g(x)]`` for an involution ``g`` (``g(g(x)) == x``: a
    transpose, a flip, their compositions): the pairs ``{x, g(x)}``, numbered by their smaller
    entry, which has sign +1, as the solver numbers them. A pair is zero where its two ends
    carry different signs (``W[x] = -W[x]``), or where ``g(x) == x`` with sign -1.

    ``nodes``: each entry's flat index, in any shape; ``paired(t)``: ``t`` read at the other end
    of every pair (``t[g(x)]`` for each ``x``: a gather, or a transpose and flip of ``t``);
    ``negative``: where ``s = -1`` (a bool tensor shaped like ``nodes``, or a 0-d one for a
    constant sign; None: all +1). Returns ``(index, n_free, sign)`` shaped like ``nodes``.
    """
    other = paired(nodes)
    first = nodes <= other  # the pair's smaller entry (a fixed point is its own)
    sign = None
    if negative is not None:
        dead = (other == nodes) & negative
        if negative.dim():  # per-entry signs: the two ends may disagree
            dead |= negative != paired(negative)
        first &= ~dead  # a pair is dead as a whole: both ends see the same test
        sign = torch.where(first, 1, torch.where(negative, -1, 1)).to(torch.int8)
        sign.masked_fill_(dead, 0)
    rank = torch.cumsum(first.reshape(-1), 0).view(first.shape).sub_(1)
    index = torch.where(first, rank, paired(rank))
    if sign is not None:
        index.masked_fill_(sign == 0, 0)  # forced zeros read parameter 0
    n_free = int(rank.reshape(-1)[-1]) + 1 if rank.numel() else 0
    return index, n_free, sign


def _involution_classes(
    n: int, constraints: list[_KeyConstraint | _RelationConstraint]
) -> tuple[Tensor, int, Tensor | None] | None:
    """:func:`pair_classes` where the declaration is one relation over all entries whose map
    is an involution (a user's tie of that structure); None for any other declaration
    (checking costs one gather)."""
    if len(constraints) != 1 or not isinstance(constraints[0], _RelationConstraint):
        return None
    relation = constraints[0]
    target = relation.target
    if relation.offset != 0 or len(target) != n:
        return None
    nodes = torch.arange(n)
    if not torch.equal(target.index_select(0, target), nodes):
        return None
    negative = None if relation.sign is None else relation.sign < 0
    return pair_classes(nodes, lambda t: t.index_select(0, target), negative)


def solve(
    n: int, constraints: list[_KeyConstraint | _RelationConstraint]
) -> tuple[Tensor, int, Tensor | None]:
    """Classes of the entries ``0..n-1`` under all ``constraints``.

    Returns ``(index, n_free, sign)`` (flat): free parameters are numbered by the smallest flat
    index in their class, and that entry has sign +1. ``sign`` is None when no relation carries a
    sign, otherwise an int8 tensor of +1/-1/0 (0: forced to zero).

    >>> index, n_free, sign = solve(3, [_RelationConstraint(torch.tensor([1, 0, 2]),
    ...                                                     torch.tensor([-1, -1, -1]))])
    >>> index.tolist(), n_free, sign.tolist()
    ([0, 0, 0], 1, [1, -1, 0])
    """
    pairs = _involution_classes(n, constraints)
    if pairs is not None:
        return pairs
    maps: list[tuple[int, Tensor, Tensor | None]] = []
    signed = any(isinstance(c, _RelationConstraint) and c.sign is not None for c in constraints)
    for constraint in constraints:
        odd = None
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
            if constraint.sign is not None:
                odd = constraint.sign < 0  # bool: far() adds it to 2 * node in one pass
        maps.append((constraint.offset, target, odd))

    root, parity, odd_root = _components(n, maps, signed)
    if parity is None:
        index, n_free = _rank_of_representatives(root, None)
        return index, n_free, None
    sign = parity.mul_(-2).add_(1)  # int8: +1 for parity 0, -1 for parity 1
    if odd_root is None:  # no contradiction: nothing is forced to zero
        index, n_free = _rank_of_representatives(root, None)
        return index, n_free, sign
    live_root = ~odd_root
    index, n_free = _rank_of_representatives(root, live_root)
    live = live_root.index_select(0, root)
    sign.mul_(live)
    index.mul_(live)
    return index, n_free, sign

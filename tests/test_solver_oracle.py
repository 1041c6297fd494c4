"""The solver's adversarial shapes at small sizes, through the path ``Tie.layout`` takes, against
an independent union-find with parity (pure Python): cycles, chains in random order, random
functions, permutations and involutions, one to three generators, signed and unsigned, mixed
with keys; and the closed forms (involutions, ``KernelSymmetry`` repeated over leading dims)
against the general solver."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tietorch
from tietorch import KernelSymmetry, Tie


def union_find_layout(n, relations, keys=()):
    """(index, n_free, sign) of ``W[x] = s * W[t[x]]`` for every ``(t, s)`` in ``relations``
    (lists of length n) and equal keys (lists of length n) in ``keys``: classes by union-find
    with a parity per node, numbered by their smallest entry, that entry with sign +1; a class
    holding a cycle of odd parity is zero (index 0, sign 0)."""
    parent, parity, bad = list(range(n)), [0] * n, [False] * n

    def find(x):
        path = 0
        while parent[x] != x:
            path ^= parity[x]
            x = parent[x]
        return x, path

    def union(a, b, odd):
        (ra, pa), (rb, pb) = find(a), find(b)
        if ra == rb:
            if pa ^ pb ^ odd:
                bad[ra] = True
            return
        low, high = min(ra, rb), max(ra, rb)
        parent[high], parity[high] = low, pa ^ pb ^ odd
        bad[low] = bad[low] or bad[high]

    for target, sign in relations:
        for x in range(n):
            union(x, target[x], int(sign[x] < 0))
    for key in keys:
        first = {}
        for x in range(n):
            union(x, first.setdefault(key[x], x), 0)
    roots = [find(x) for x in range(n)]
    smallest = {}
    for x, (r, _) in enumerate(roots):
        smallest.setdefault(r, x)
    numbers = {}
    for x in range(n):
        r = roots[x][0]
        if x == smallest[r] and not bad[r]:
            numbers[r] = len(numbers)
    index, sign = [], []
    for x in range(n):
        r, p = roots[x]
        if bad[r]:
            index.append(0)
            sign.append(0)
        else:
            index.append(numbers[r])
            sign.append(-1 if p ^ roots[smallest[r]][1] else 1)
    return index, len(numbers), sign


class Declared(Tie):
    """A 1-d tie declared by relation maps, with optional signs."""

    def __init__(self, maps, signs):
        self.maps, self.signs = maps, signs

    def relations(self, *idx):
        return [(torch.tensor(m),) for m in self.maps]

    def sign(self, *idx):
        return [torch.tensor(s) for s in self.signs]


class Keyed(Tie):
    def __init__(self, key):
        self.values = key

    def key(self, i):
        return (torch.tensor(self.values),)


def cycle(order):
    target = [0] * len(order)
    for a, b in zip(order, order[1:] + order[:1]):
        target[a] = b
    return target


def chain(order):
    target = [0] * len(order)
    for a, b in zip(order, order[1:] + order[-1:]):
        target[a] = b  # the last one maps onto itself
    return target


def involution(order, fixed):
    target = list(range(len(order)))
    pairs = order[fixed:]
    for a, b in zip(pairs[0::2], pairs[1::2]):
        target[a], target[b] = b, a
    return target


@st.composite
def declarations(draw):
    n = draw(st.integers(1, 40))
    kinds = st.sampled_from(["cycle", "chain", "function", "permutation", "involution"])
    maps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(kinds)
        order = draw(st.permutations(range(n)))
        if kind == "cycle":
            maps.append(cycle(order))
        elif kind == "chain":
            maps.append(chain(order))
        elif kind == "function":
            maps.append(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)))
        elif kind == "permutation":
            maps.append(list(order))
        else:
            maps.append(involution(order, draw(st.integers(0, n))))
    signed = draw(st.booleans())
    signs = [
        draw(st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n)) if signed else [1] * n
        for _ in maps
    ]
    keys = []
    if draw(st.booleans()):
        keys.append(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    return n, maps, signs, keys


@settings(max_examples=400, deadline=None)
@given(declarations())
def test_layouts_match_union_find_with_parity(case):
    n, maps, signs, keys = case
    tie = Declared(maps, signs)
    for key in keys:
        tie = tie & Keyed(key)
    layout = tie.layout((n,))
    index, n_free, sign = union_find_layout(n, list(zip(maps, signs)), keys)
    assert layout.n_free == n_free
    assert layout.index.tolist() == index
    got_sign = [1] * n if layout.sign is None else layout.sign.tolist()
    assert got_sign == sign


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.permutations(range(n)), st.integers(0, n),
    st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n), st.booleans())))  # fmt: skip
def test_involutions_in_closed_form_match_union_find(case):
    """One involution over every entry takes the closed form (pairs, no solver): the same
    classes, numbering, signs and zeros as union-find."""
    order, fixed, signs, signed = case
    n = len(order)
    target = involution(list(order), fixed)
    signs = signs if signed else [1] * n
    layout = Declared([target], [signs]).layout((n,))
    index, n_free, sign = union_find_layout(n, [(target, signs)])
    assert (layout.n_free, layout.index.tolist()) == (n_free, index)
    assert ([1] * n if layout.sign is None else layout.sign.tolist()) == sign


def oracle_of(tie, shape):
    """The union-find layout of ``tie``'s own declaration on ``shape`` (its relations or key
    evaluated on the index grids, as the solver would get them)."""
    n = math.prod(shape)
    relations, keys = [], []
    for c in tie._constraints(shape):
        if hasattr(c, "parts"):  # a key: entries with equal parts share a class
            keys.append(list(zip(*(p.tolist() for p in c.parts), strict=True)) or [()] * n)
        else:
            sign = [1] * n if c.sign is None else c.sign.tolist()
            relations.append((c.target.tolist(), sign))
    return union_find_layout(n, relations, keys)


KERNEL_SHAPES = [(3, 3), (4, 5, 5), (2, 3, 4, 4), (0, 3, 3), (6, 2, 2)]


@pytest.mark.parametrize(
    "tie, shapes",
    [
        *[(KernelSymmetry(g), KERNEL_SHAPES) for g in ("D4", "C4", "C2")],
        *[(KernelSymmetry(g), [*KERNEL_SHAPES, (2, 3, 4)]) for g in ("flip_h", "flip_v")],
        (tietorch.SymmetricFlip(), [(5, 5, 3, 3), (2, 2, 4, 4), (3, 3, 1, 2)]),
        (tietorch.SymmetricFlip(sign=-1), [(4, 4, 3, 3), (3, 3, 2, 2)]),
        (tietorch.SymmetricFlip(dims=(1, 3), flip=0), [(3, 4, 2, 4)]),
        (tietorch.Symmetric(), [(7, 7), (1, 1)]),
        (tietorch.Symmetric(dims=(1, 2)), [(2, 4, 4)]),
        (tietorch.Antisymmetric(), [(6, 6), (1, 1)]),
        (tietorch.Antisymmetric(dims=(2, 0)), [(3, 2, 3)]),
        (tietorch.Toeplitz(), [(3, 5), (5, 3), (4, 4), (2, 3, 4), (1, 1)]),
        (tietorch.Toeplitz(dims=(-1, -2)), [(3, 5)]),
        (tietorch.Toeplitz(dims=(0, 1)), [(3, 4, 2)]),
        (tietorch.Hankel(), [(3, 5), (5, 3), (2, 2, 4, 3)]),
        (tietorch.Circulant(), [(4, 4), (3, 5, 5), (1, 1)]),
    ],
)
def test_built_in_closed_forms_match_union_find(tie, shapes):
    """Each built-in tie's closed form (no relation or key evaluated, no solve) gives the
    union-find layout of its own declaration: classes, numbering, signs, zeros, and so the
    checkpoint fingerprint a solved layout had."""
    for shape in shapes:
        closed = tie.layout(shape)
        index, n_free, sign = oracle_of(tie, shape)
        assert closed.n_free == n_free, shape
        assert closed.index.reshape(-1).tolist() == index, shape
        got = [1] * len(index) if closed.sign is None else closed.sign.reshape(-1).tolist()
        assert got == sign, shape
        reference = tietorch.TieLayout(
            torch.tensor(index, dtype=torch.long).view(shape),
            n_free,
            None if closed.sign is None else torch.tensor(sign, dtype=torch.int8).view(shape),
        )
        assert closed.fingerprint() == reference.fingerprint(), shape

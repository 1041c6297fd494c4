"""The class solver against independent references: union-find and dense rank."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from tietorch import Tie
from tietorch._rank import constraint_matrix, gather_matrix, solution_dimension
from tietorch._solver import connected_components


def union_find_min_labels(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    smallest = {}
    for x in range(n):
        smallest.setdefault(find(x), x)
    return [smallest[find(x)] for x in range(n)]


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 80))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=120))
    return n, edges


@given(graphs())
def test_components_match_union_find(graph):
    n, edges = graph
    src = torch.tensor([a for a, _ in edges], dtype=torch.long)
    dst = torch.tensor([b for _, b in edges], dtype=torch.long)
    assert connected_components(n, src, dst).tolist() == union_find_min_labels(n, edges)


def test_long_cycle_is_one_component():
    n = 4096 * 8
    src = torch.arange(n)
    perm = torch.randperm(n)
    dst = torch.empty_like(perm)
    dst[perm] = perm.roll(1)  # one random cycle through every node
    assert bool((connected_components(n, src, dst) == 0).all())


@st.composite
def random_relation_ties(draw):
    """A random permutation relation with random signs on a small shape."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    n = int(np.prod(shape))
    generators = draw(st.integers(1, 2))
    relations, signs = [], []
    for _ in range(generators):
        perm = draw(st.permutations(range(n)))
        flat = torch.tensor(perm).view(shape)
        coords = np.unravel_index(flat.numpy(), shape)
        relations.append(tuple(torch.tensor(c).view(shape) for c in coords))
        sign = draw(st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n))
        signs.append(torch.tensor(sign).view(shape))

    class RandomRelation(Tie):
        def relations(self, *idx):
            return relations

        def sign(self, *idx):
            return signs

    return RandomRelation(), shape


@given(random_relation_ties())
def test_random_signed_relations_are_solved_minimally(case):
    tie, shape = case
    layout = tie.layout(shape)
    c = constraint_matrix(tie, shape)
    g = gather_matrix(layout)
    # the layout satisfies every declared row, has independent columns, and spans the null space
    assert np.abs(c @ g).max(initial=0) == 0
    assert np.linalg.matrix_rank(g) == layout.n_free if layout.n_free else True
    assert layout.n_free == solution_dimension(tie, shape)

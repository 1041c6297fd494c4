"""``Equivariant`` / ``Invariant`` and ``tietorch.groups``: free-parameter counts against an
independent orbit oracle (the whole group enumerated by closure, orbits of (output, input)
pairs counted with their signs), exact equivariance of layers and small networks, refusals,
and the DeepSets fast path."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tietorch as tt
from tietorch import Equivariant, Invariant, groups
from tietorch.testing import check_equivariance

# ------------------------------------------------------------------ the oracle


def _closure(generators: list[tuple[tuple[int, ...], ...]]) -> set[tuple[tuple[int, ...], ...]]:
    """Every element of the group the signed-permutation tuples generate. An element is a tuple
    of parts, each part a (perm..., sign...) tuple; composition applies ``b`` after ``a``."""

    def compose(a, b):
        parts = []
        for pa, pb in zip(a, b):
            n = len(pa) // 2
            perm = tuple(pb[pa[x]] for x in range(n))
            sign = tuple(pa[n + x] * pb[n + pa[x]] for x in range(n))
            parts.append(perm + sign)
        return tuple(parts)

    identity = tuple(tuple(range(len(p) // 2)) + (1,) * (len(p) // 2) for p in generators[0])
    seen, frontier = {identity}, [identity]
    while frontier:
        nxt = []
        for element in frontier:
            for g in generators:
                new = compose(element, g)
                if new not in seen:
                    seen.add(new)
                    nxt.append(new)
        frontier = nxt
    return seen


def _signed(perms, signs):
    out = []
    for k, p in enumerate(perms):
        s = [1] * len(p) if signs is None else [int(v) for v in signs[k]]
        out.append(tuple(int(v) for v in p) + tuple(s))
    return out


def oracle_free(out_perms, in_perms, out_signs=None, in_signs=None) -> int:
    """Free parameters of an equivariant (out, in) weight: orbits of index pairs under the
    whole group, an orbit that meets itself with sign -1 being zero."""
    gens = list(zip(_signed(out_perms, out_signs), _signed(in_perms, in_signs)))
    elements = _closure(gens)
    n_out, n_in = len(out_perms[0]), len(in_perms[0])
    parent = list(range(n_out * n_in))
    parity = [1] * (n_out * n_in)  # sign of an entry relative to its root
    dead = set()

    def find(x):
        if parent[x] == x:
            return x, 1
        root, s = find(parent[x])
        parent[x], parity[x] = root, parity[x] * s
        return root, parity[x]

    for po, pi in elements:
        for o in range(n_out):
            for i in range(n_in):
                x, y = o * n_in + i, po[o] * n_in + pi[i]
                s = po[n_out + o] * pi[n_in + i]  # W[y] = s * W[x]
                (rx, sx), (ry, sy) = find(x), find(y)
                if rx == ry:
                    if sy != s * sx:
                        dead.add(rx)
                else:
                    parent[ry], parity[ry] = rx, s * sx * sy
                    if ry in dead:
                        dead.add(rx)
    roots = {find(x)[0] for x in range(n_out * n_in)}
    return len(roots - dead)


# ------------------------------------------------------------------ counts


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_deepsets_counts(n):
    s = groups.symmetric(n)
    assert Equivariant(s, s).layout((n, n)).n_free == oracle_free(s, s) == min(n, 2)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_maron_counts_match_the_literature_and_the_oracle(n):
    pairs = groups.on_tuples(groups.symmetric(n), 2)
    free = Equivariant(pairs, pairs).layout((n * n, n * n)).n_free
    assert free == {2: 8, 3: 14}.get(n, 15)
    if n <= 4:  # the oracle is pure Python: n^4 pairs times n! elements
        assert free == oracle_free(pairs, pairs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (groups.cyclic(5), groups.cyclic(5)),
        lambda: (groups.dihedral(6), groups.dihedral(6)),
        lambda: (groups.dihedral(5), groups.dihedral(5)),
        lambda: (groups.symmetric(4), groups.trivial(1, 2)),  # set -> invariant
        lambda: (
            groups.direct_sum(groups.symmetric(3), groups.trivial(2, 2)),  # set + 2 globals
            groups.direct_sum(groups.symmetric(3), groups.trivial(1, 2)),
        ),
        lambda: (groups.on_tuples(groups.cyclic(3), 2), groups.cyclic(3)),
    ],
)
def test_counts_of_other_groups_and_actions_match_the_oracle(make):
    in_perms, out_perms = make()
    shape = (len(out_perms[0]), len(in_perms[0]))
    assert Equivariant(in_perms, out_perms).layout(shape).n_free == oracle_free(out_perms, in_perms)


def test_the_icosahedral_rotation_group_has_order_60_and_the_oracles_count():
    rot = groups.icosahedral()
    assert len(_closure([tuple(g) for g in zip(_signed(rot, None))])) == 60
    assert Equivariant(rot, rot).layout((12, 12)).n_free == oracle_free(rot, rot) == 4


def test_circulant_is_cyclic_equivariance():
    c = groups.cyclic(6)
    layout = Equivariant(c, c).layout((6, 6))
    assert layout.n_free == 6
    w = layout.materialize(torch.arange(6.0))
    assert torch.equal(w.roll((1, 1), (0, 1)), w)


@pytest.mark.parametrize("seed", range(4))
def test_signed_generators_match_the_oracle(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 4
    perms = groups.dihedral(n)
    in_signs = [torch.randint(0, 2, (n,), generator=gen) * 2 - 1 for _ in perms]
    out_signs = [torch.randint(0, 2, (n,), generator=gen) * 2 - 1 for _ in perms]
    tie = Equivariant(perms, perms, in_signs=in_signs, out_signs=out_signs)
    assert tie.layout((n, n)).n_free == oracle_free(perms, perms, out_signs, in_signs)
    inv = Invariant(perms, signs=out_signs)
    assert inv.layout((n,)).n_free == oracle_free(perms, groups.trivial(1, 2), out_signs)


# ------------------------------------------------------------------ equivariance


def _deepsets(n: int, width: int = 3) -> nn.Module:
    """Sets of n items: an equivariant layer per item channel pair, then an invariant readout.
    Items are the last dim; channels are kept apart by one equivariant Linear each."""
    s = groups.symmetric(n)

    class DeepSets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = nn.ModuleList(nn.Linear(n, n) for _ in range(width))
            self.rho = nn.Linear(n, 1)
            for layer in self.phi:
                tt.register_tie(layer, "weight", Equivariant(s, s))
                tt.register_tie(layer, "bias", Invariant(s))
            tt.register_tie(self.rho, "weight", Equivariant(s, groups.trivial(1, len(s))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = sum(torch.tanh(layer(x)) for layer in self.phi)
            return self.rho(h)

    return DeepSets().double()


def test_layers_and_a_deepsets_network_are_exactly_equivariant():
    torch.manual_seed(0)
    n = 7
    net = _deepsets(n)
    for _ in range(5):
        perm = torch.randperm(n)
        act = lambda x, p=perm: x[..., p]  # noqa: E731
        assert check_equivariance(net, act, lambda y: y, input_shape=(4, n)) < 1e-12
        assert check_equivariance(net.phi[0], act, act, input_shape=(4, n)) < 1e-12


def test_a_maron_layer_is_exactly_equivariant_on_graphs():
    torch.manual_seed(0)
    n = 5
    pairs = groups.on_tuples(groups.symmetric(n), 2)
    layer = nn.Linear(n * n, n * n).double()
    tt.register_tie(layer, "weight", Equivariant(pairs, pairs))
    tt.register_tie(layer, "bias", Invariant(pairs))
    assert sum(p.numel() for p in layer.parameters()) == 15 + 2
    for _ in range(5):
        on_pairs = groups.on_tuples([torch.randperm(n)], 2)[0]
        act = lambda x, p=on_pairs: x[..., p]  # noqa: E731
        assert check_equivariance(layer, act, act, input_shape=(3, n * n)) < 1e-12


def test_check_equivariance_fails_readably():
    layer = nn.Linear(4, 4).double()
    swap = lambda x: x[..., [1, 0, 2, 3]]  # noqa: E731
    with pytest.raises(AssertionError, match=r"max error .* at index"):
        check_equivariance(layer, swap, swap, input_shape=(2, 4))
    with pytest.raises(tt.errors.ArgumentError, match="exactly one"):
        check_equivariance(layer, swap, swap)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Equivariant([[0, 0, 1]], [[0, 1, 2]]), tt.errors.ArgumentError, "permutation"),
        (lambda: Equivariant([[0, 1]], [[0, 1], [1, 0]]), tt.errors.ArgumentError, "1 input"),
        (lambda: Equivariant([[0, 1], [0, 1, 2]], [[0], [0]]), tt.errors.ArgumentError, "lengths"),
        (
            lambda: Equivariant([[1, 0]], [[1, 0]], in_signs=[[1, 2]]),
            tt.errors.ArgumentError,
            r"\+1 or -1",
        ),
        (lambda: Equivariant([[1, 0]], [[1, 0]], in_signs=[[1]]), tt.errors.ShapeError, "shape"),
        (lambda: Equivariant([[1.0, 0.0]], [[1, 0]]), tt.errors.TieTypeError, "integer"),
        (lambda: Equivariant(torch.tensor([1, 0]), [[1, 0]]), tt.errors.TieTypeError, "sequence"),
        (lambda: Invariant([]), tt.errors.TieTypeError, "non-empty"),
        (lambda: groups.symmetric(0), tt.errors.ArgumentError, ">= 1"),
        (
            lambda: groups.direct_sum(groups.cyclic(2), groups.dihedral(2)),
            tt.errors.ArgumentError,
            "generators",
        ),
    ],
)
def test_bad_declarations_are_refused(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_a_shape_mismatch_leaves_the_module_untouched():
    layer = nn.Linear(4, 3)
    before = copy.deepcopy(layer.state_dict())
    s = groups.symmetric(4)
    with pytest.raises(tt.errors.ShapeError, match=r"\(out=4, in=4"):
        tt.register_tie(layer, "weight", Equivariant(s, s))
    assert not torch.nn.utils.parametrize.is_parametrized(layer)
    assert layer.state_dict().keys() == before.keys()
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in before.items())


# ------------------------------------------------------------------ the fast path


def test_a_deepsets_layer_runs_the_diagonal_plus_constant_rule():
    torch.manual_seed(0)
    n = 64
    s = groups.symmetric(n)
    layer = nn.Linear(n, n).double()
    tt.register_tie(layer, "weight", Equivariant(s, s))
    gathered = copy.deepcopy(layer)
    assert [row.rule for row in tt.fast_forward(layer)] == ["diagonal-plus-constant"]
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(layer(x), gathered(x), rtol=1e-12, atol=1e-12)

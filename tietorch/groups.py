"""Generators of common permutation groups and of their actions, for :class:`~tietorch.Equivariant`
and :class:`~tietorch.Invariant`.

A group is given by a list of generators, each a permutation of ``range(n)`` (a 1-d int64
tensor); an *action* of the same group on another index set is a list of as many permutations,
generator ``k`` acting as ``action[k]``. The helpers here build the groups (``symmetric``,
``cyclic``, ``dihedral``, ``trivial``) and the actions they induce on tuples of indices
(``on_tuples``: pairs for matrices, flattened in row-major order) and on concatenated index
sets (``direct_sum``), so that the equivariant layers of the literature are one line each:

>>> from tietorch import Equivariant, groups
>>> s = groups.symmetric(6)
>>> Equivariant(s, s).layout((6, 6)).n_free  # DeepSets, set -> set
2
>>> Equivariant(s, groups.trivial(1, len(s))).layout((1, 6)).n_free  # set -> invariant
1
>>> pairs = groups.on_tuples(s, 2)
>>> Equivariant(pairs, pairs).layout((36, 36)).n_free  # Maron et al., graph -> graph
15
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ArgumentError, TieTypeError

__all__ = [
    "cyclic",
    "dihedral",
    "direct_sum",
    "icosahedral",
    "on_tuples",
    "symmetric",
    "trivial",
]


def _size(n: object, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TieTypeError(f"{what}: n must be an int, got {n!r}")
    if n < 1:
        raise ArgumentError(f"{what}: n must be >= 1, got {n}")
    return n


def symmetric(n: int) -> list[Tensor]:
    """The symmetric group S_n on ``range(n)``: a transposition ``(0 1)`` and the cycle
    ``i -> i + 1 mod n`` (together they generate every permutation).

    Example:
        >>> tuple(p.tolist() for p in symmetric(3))
        ([1, 0, 2], [1, 2, 0])
    """
    n = _size(n, "symmetric")
    swap = torch.arange(n)
    if n > 1:
        swap[0], swap[1] = 1, 0
    return [swap, cyclic(n)[0]]


def cyclic(n: int) -> list[Tensor]:
    """The cyclic group C_n on ``range(n)``: the shift ``i -> i + 1 mod n``.

    Example:
        >>> tuple(p.tolist() for p in cyclic(4))
        ([1, 2, 3, 0],)
    """
    n = _size(n, "cyclic")
    return [torch.roll(torch.arange(n), -1)]


def dihedral(n: int) -> list[Tensor]:
    """The dihedral group D_n (the symmetries of a regular n-gon) on its vertices
    ``range(n)``: the rotation ``i -> i + 1 mod n`` and the reflection ``i -> -i mod n``.

    Example:
        >>> tuple(p.tolist() for p in dihedral(4))
        ([1, 2, 3, 0], [0, 3, 2, 1])
    """
    n = _size(n, "dihedral")
    return [cyclic(n)[0], (-torch.arange(n)) % n]


def trivial(n: int, generators: int = 1) -> list[Tensor]:
    """The group acting trivially on ``range(n)``, as ``generators`` identity permutations: the
    action on an output the group leaves alone (an invariant layer's ``out_perms``).

    Example:
        >>> tuple(p.tolist() for p in trivial(2, 3))
        ([0, 1], [0, 1], [0, 1])
    """
    n = _size(n, "trivial")
    return [torch.arange(n) for _ in range(generators)]


def icosahedral() -> list[Tensor]:
    """The rotation group of the icosahedron (order 60) on its 12 vertices: a rotation by
    120 degrees about the axis (1, 1, 1) and one by 72 degrees about vertex 0. The vertices,
    in order, are the cyclic permutations of ``(0, ±1, ±phi)``: ``(0, ±1, ±phi)`` (signs in
    the order ++, +-, -+, --), then ``(±phi, 0, ±1)``, then ``(±1, ±phi, 0)``.

    Example:
        >>> from tietorch import Equivariant
        >>> rot = icosahedral()
        >>> Equivariant(rot, rot).layout((12, 12)).n_free  # a vertex, 5 near, 5 far, opposite
        4
    """
    phi = (1 + 5**0.5) / 2
    base = [(0.0, a, b * phi) for a in (1, -1) for b in (1, -1)]
    vertices = torch.tensor(
        [v[-k:] + v[:-k] if k else v for k in range(3) for v in base], dtype=torch.float64
    )
    axis = vertices[0] / vertices[0].norm()
    angle = 2 * torch.pi / 5
    cross = torch.tensor(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
        dtype=torch.float64,
    )
    # Rodrigues' rotation formula, then each rotated vertex matched to the nearest vertex
    five = (
        torch.eye(3, dtype=torch.float64)
        + torch.sin(torch.tensor(angle)) * cross
        + (1 - torch.cos(torch.tensor(angle))) * cross @ cross
    )
    three = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    return [torch.cdist(vertices @ rotation.T, vertices).argmin(1) for rotation in (three, five)]


def _action(action: Sequence[Tensor], what: str) -> list[Tensor]:
    if isinstance(action, Tensor) or not isinstance(action, Sequence) or not action:
        raise TieTypeError(f"{what}: expected a non-empty list of permutations, got {action!r}")
    return [torch.as_tensor(p, dtype=torch.long) for p in action]


def on_tuples(action: Sequence[Tensor], k: int) -> list[Tensor]:
    """The action induced on ``k``-tuples of indices, flattened in row-major order: generator
    ``p`` maps tuple ``(i_1, ..., i_k)`` to ``(p[i_1], ..., p[i_k])``. ``k = 2`` gives the
    action on the entries of an ``n x n`` matrix (``matrix.reshape(-1)``).

    Example:
        >>> tuple(p.tolist() for p in on_tuples(cyclic(2), 2))  # (0,0) (0,1) (1,0) (1,1)
        ([3, 2, 1, 0],)
    """
    perms = _action(action, "on_tuples")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ArgumentError(f"on_tuples: k must be an int >= 1, got {k!r}")
    out = []
    for p in perms:
        n = len(p)
        grid = torch.zeros((n,) * k, dtype=torch.long)
        for d in range(k):  # row-major flat index of the mapped tuple
            shape = [1] * k
            shape[d] = n
            grid = grid * n + p.view(shape)
        out.append(grid.reshape(-1))
    return out


def direct_sum(*actions: Sequence[Tensor]) -> list[Tensor]:
    """The action on concatenated index sets: generator ``k`` acts on the first
    ``len(actions[0][k])`` indices as ``actions[0][k]``, on the next ones as ``actions[1][k]``,
    and so on (every action must have as many generators).

    Example:
        >>> s = symmetric(3)
        >>> tuple(p.tolist() for p in direct_sum(s, trivial(1, 2)))  # a set, one global
        ([1, 0, 2, 3], [1, 2, 0, 3])
    """
    parts = [_action(a, "direct_sum") for a in actions]
    if not parts:
        raise ArgumentError("direct_sum: needs at least one action")
    counts = {len(p) for p in parts}
    if len(counts) != 1:
        raise ArgumentError(f"direct_sum: actions with different numbers of generators {counts}")
    out = []
    for gens in zip(*parts):
        offset, pieces = 0, []
        for p in gens:
            pieces.append(p + offset)
            offset += len(p)
        out.append(torch.cat(pieces))
    return out

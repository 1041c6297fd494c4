"""Equivariance as a tie: a weight constant on the orbits of a group acting on its indices.

A linear map is equivariant to a group acting by (signed) permutations on its input and output
exactly when its weight satisfies ``W[g_out(o), g_in(i)] = s_out(o) * s_in(i) * W[o, i]`` for
every group element, i.e. is constant (up to sign) on the orbits of the group acting on
(output, input) index pairs (Ravanbakhsh, Schneider & Poczos 2017, "Equivariance through
parameter-sharing", https://arxiv.org/abs/1702.08389). Declaring it for the group's generators
is enough: the solver closes the relations. ``tietorch.groups`` builds the generators of common
groups and their actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._tie import Tie
from ..errors import ArgumentError, ShapeError, TieTypeError
from ._dims import Shape

__all__ = ["Equivariant", "Invariant"]


def _permutations(perms: Any, what: str) -> list[Tensor]:
    """``perms`` as a non-empty list of 1-d int64 permutations of one length; refused
    otherwise, naming the offending generator."""
    if isinstance(perms, Tensor) and perms.dim() == 1:
        raise TieTypeError(f"{what}: expected a sequence of generators, got one 1-d tensor")
    if not isinstance(perms, (Sequence, Tensor)) or isinstance(perms, str) or len(perms) == 0:
        raise TieTypeError(f"{what}: expected a non-empty sequence of permutations, got {perms!r}")
    out = []
    for k, p in enumerate(perms):
        t = torch.as_tensor(p, device="cpu")
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TieTypeError(f"{what}[{k}]: expected a 1-d integer permutation, got {p!r}")
        t = t.to(torch.long)
        if not torch.equal(torch.sort(t).values, torch.arange(len(t))):
            raise ArgumentError(f"{what}[{k}]: not a permutation of range({len(t)}): {t.tolist()}")
        out.append(t)
    lengths = {len(t) for t in out}
    if len(lengths) != 1:
        raise ArgumentError(f"{what}: generators of different lengths {sorted(lengths)}")
    return out


def _signs(signs: Any, perms: list[Tensor], what: str) -> list[Tensor] | None:
    """``signs`` as one ±1 int64 vector per generator (None: all +1)."""
    if signs is None:
        return None
    if not isinstance(signs, (Sequence, Tensor)) or len(signs) != len(perms):
        raise ArgumentError(
            f"{what}: expected one sign vector per generator ({len(perms)}), got {signs!r}"
        )
    out = []
    for k, (s, p) in enumerate(zip(signs, perms)):
        t = torch.as_tensor(s, device="cpu")
        if t.shape != p.shape:
            raise ShapeError(f"{what}[{k}]: shape {tuple(t.shape)}, expected {tuple(p.shape)}")
        if not bool(((t == 1) | (t == -1)).all()):
            raise ArgumentError(f"{what}[{k}]: signs must be +1 or -1, got {t.tolist()}")
        out.append(t.to(torch.long))
    return out


class Equivariant(Tie):
    """A weight ``(out, in, *rest)`` of a layer equivariant to a group given by generators:
    for every ``k``, ``W[out_perms[k][o], in_perms[k][i], ...] = out_signs[k][o] *
    in_signs[k][i] * W[o, i, ...]`` (signs default +1). The trailing dims (a conv's kernel)
    are left alone: the group acts on channels only.

    ``in_perms`` / ``out_perms``: equally long sequences of generators, each a permutation of
    ``range(in)`` / ``range(out)`` (1-d integer tensors or lists). ``tietorch.groups`` builds
    them: ``Equivariant(*[groups.symmetric(n)] * 2)`` is DeepSets' layer (2 free parameters).

    Example:
        >>> from tietorch import groups
        >>> s5 = groups.symmetric(5)
        >>> Equivariant(s5, s5).layout((5, 5)).n_free  # DeepSets: lambda * x + gamma * sum(x)
        2
        >>> pairs = groups.on_tuples(s5, 2)  # S_5 acting on 5 x 5 matrices, flattened
        >>> Equivariant(pairs, pairs).layout((25, 25)).n_free  # Maron et al.'s 15
        15
    """

    def __init__(
        self,
        in_perms: Sequence[Any],
        out_perms: Sequence[Any],
        in_signs: Sequence[Any] | None = None,
        out_signs: Sequence[Any] | None = None,
    ) -> None:
        self.in_perms = _permutations(in_perms, "Equivariant: in_perms")
        self.out_perms = _permutations(out_perms, "Equivariant: out_perms")
        if len(self.in_perms) != len(self.out_perms):
            raise ArgumentError(
                f"Equivariant: {len(self.in_perms)} input generators but "
                f"{len(self.out_perms)} output generators (one of each per group generator)"
            )
        self.in_signs = _signs(in_signs, self.in_perms, "Equivariant: in_signs")
        self.out_signs = _signs(out_signs, self.out_perms, "Equivariant: out_signs")

    def check_shape(self, shape: Shape) -> None:
        n_out, n_in = len(self.out_perms[0]), len(self.in_perms[0])
        if len(shape) < 2 or shape[0] != n_out or shape[1] != n_in:
            raise ShapeError(f"needs a shape (out={n_out}, in={n_in}, ...)")

    def relations(self, *idx: Tensor) -> list[tuple[Tensor, ...]]:
        o, i, rest = idx[0], idx[1], idx[2:]
        return [(po[o], pi[i], *rest) for po, pi in zip(self.out_perms, self.in_perms)]

    def sign(self, *idx: Tensor) -> list[int | Tensor]:
        o, i = idx[0], idx[1]
        signs: list[int | Tensor] = []
        for k in range(len(self.in_perms)):
            s: int | Tensor = 1
            if self.out_signs is not None:
                s = self.out_signs[k][o]
            if self.in_signs is not None:
                s = s * self.in_signs[k][i]
            signs.append(s)
        return signs

    def __repr__(self) -> str:
        signed = "" if self.in_signs is None and self.out_signs is None else ", signed"
        return (
            f"Equivariant({len(self.in_perms)} generators, in={len(self.in_perms[0])}, "
            f"out={len(self.out_perms[0])}{signed})"
        )


class Invariant(Tie):
    """A 1-d tensor (a bias) fixed by a group given by generators: ``b[perms[k][o]] =
    signs[k][o] * b[o]`` (signs default +1).

    Example:
        >>> from tietorch import groups
        >>> Invariant(groups.symmetric(4)).layout((4,)).n_free  # one bias for the whole set
        1
        >>> Invariant(groups.cyclic(4), signs=[[-1] * 4]).layout((4,)).n_free  # alternating
        1
        >>> Invariant(groups.cyclic(3), signs=[[-1] * 3]).layout((3,)).n_free  # odd cycle: 0
        0
    """

    def __init__(self, perms: Sequence[Any], signs: Sequence[Any] | None = None) -> None:
        self.perms = _permutations(perms, "Invariant: perms")
        self.signs = _signs(signs, self.perms, "Invariant: signs")

    def check_shape(self, shape: Shape) -> None:
        n = len(self.perms[0])
        if tuple(shape) != (n,):
            raise ShapeError(f"needs a 1-d shape ({n},)")

    def relations(self, *idx: Tensor) -> list[tuple[Tensor, ...]]:
        return [(p[idx[0]],) for p in self.perms]

    def sign(self, *idx: Tensor) -> list[int | Tensor]:
        if self.signs is None:
            return [1] * len(self.perms)
        return [s[idx[0]] for s in self.signs]

    def __repr__(self) -> str:
        signed = "" if self.signs is None else ", signed"
        return f"Invariant({len(self.perms)} generators, n={len(self.perms[0])}{signed})"

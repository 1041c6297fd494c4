"""An independent check of a layout: the constraint system written out densely, solved by rank.

The solver finds classes with a graph algorithm. This module instead writes every declared
relation as a row of a dense matrix ``C`` (``W[x] - s * W[g(x)] = 0``, and ``W[x] - W[y] = 0``
for entries with equal keys) and uses linear algebra: the tied subspace is the null space of
``C``, of dimension ``N - rank(C)``. Meant for small shapes (a few hundred entries).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._tie import AllOf, Tie, TieLayout, _grids, key_parts, relation_list
from .errors import DeclarationError, TieTypeError

__all__: list[str] = []


def _rows_of(tie: Tie, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The constraint rows declared by ``tie`` (not by its layout) on ``shape``."""
    if isinstance(tie, AllOf):
        return [row for part in tie.ties for row in _rows_of(part, shape)]
    n = math.prod(shape)
    declares = tie._declares()
    idx = _grids(shape)
    rows: list[np.ndarray] = []
    if declares == "key":
        parts = key_parts(tie, tie.key(*idx))
        columns = [
            torch.broadcast_to(torch.as_tensor(p), shape).reshape(-1).tolist() for p in parts
        ]
        first: dict[tuple, int] = {}
        for x, value in enumerate(zip(*columns) if columns else [()] * n):
            y = first.setdefault(tuple(value), x)
            if y != x:
                row = np.zeros(n)
                row[x], row[y] = 1.0, -1.0
                rows.append(row)
        return rows
    if declares == "layout":  # a tie declared only by its layout: nothing independent to check
        raise TieTypeError(f"{tie!r} declares no key or relations, only a layout")
    for relation, sign in relation_list(tie, tie.relations(*idx), tie.sign(*idx)):
        targets = [
            np.broadcast_to(np.asarray(torch.as_tensor(t)), shape).reshape(-1) for t in relation
        ]
        s = np.broadcast_to(np.asarray(torch.as_tensor(sign)), shape).reshape(-1)
        for x in range(n):
            target = tuple(_wrap(int(t[x]), size, tie) for t, size in zip(targets, shape))
            y = int(np.ravel_multi_index(target, shape)) if shape else 0
            row = np.zeros(n)
            row[x] += 1.0
            row[y] -= float(s[x])
            if row.any():
                rows.append(row)
    return rows


def _wrap(i: int, size: int, tie: Tie) -> int:
    """Python-style wrapping of a negative index; anything else out of range is refused."""
    if not -size <= i < size:
        raise DeclarationError(f"{tie!r}: relation index {i} is outside [-{size}, {size})")
    return i % size


def constraint_matrix(tie: Tie, shape: tuple[int, ...]) -> np.ndarray:
    """The dense matrix ``C`` (rows: declared relations) whose null space is the tied space."""
    rows = _rows_of(tie, tuple(shape))
    n = math.prod(shape)
    return np.stack(rows) if rows else np.zeros((0, n))


def gather_matrix(layout: TieLayout) -> np.ndarray:
    """``G`` with ``W.flatten() = G @ theta``: column k holds the signs of class k's entries."""
    n = layout.numel
    g = np.zeros((n, layout.n_free))
    sign = np.ones(n) if layout.sign is None else layout.sign.reshape(-1).numpy().astype(float)
    live = sign != 0
    g[np.arange(n)[live], layout.index.reshape(-1).numpy()[live]] = sign[live]
    return g


def solution_dimension(tie: Tie, shape: tuple[int, ...]) -> int:
    """``N - rank(C)``: the number of free parameters any correct layout must have."""
    c = constraint_matrix(tie, shape)
    n = math.prod(shape)
    return n - (int(np.linalg.matrix_rank(c)) if c.size else 0)

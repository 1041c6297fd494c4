"""An independent check of a layout: the constraint system written out densely, solved by rank.

The solver finds classes with a graph algorithm. This module instead writes every declared
relation as a row of a dense matrix ``C`` (``W[x] - s * W[g(x)] = 0``, and ``W[x] - W[y] = 0``
for entries with equal keys) and uses linear algebra: the tied subspace is the null space of
``C``, of dimension ``N - rank(C)``. Meant for small shapes (a few hundred entries).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ._tie import AllOf, Tie, TieLayout, _grids, key_parts, relation_list
from .errors import DeclarationError, TieTypeError

__all__: list[str] = []


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch (and its LAPACK) on one thread, then restore the thread count. On matrices of a
    few hundred columns, threads only cost: under load (more busy threads than cores) a threaded
    SVD waits on its helpers, 10 to 100 times longer than the single-threaded one."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rows_of(tie: Tie, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The constraint rows declared by ``tie`` (not by its layout) on ``shape``."""
    return list(_matrix_of(tie, shape))


def _matrix_of(tie: Tie, shape: tuple[int, ...]) -> np.ndarray:
    """The constraint rows declared by ``tie`` (not by its layout) on ``shape``, stacked."""
    n = math.prod(shape)
    if isinstance(tie, AllOf):
        blocks = [_matrix_of(part, shape) for part in tie.ties]
        return np.concatenate(blocks) if blocks else np.zeros((0, n))
    declares = tie._declares()
    idx = _grids(shape)
    if declares == "key":
        parts = key_parts(tie, tie.key(*idx))
        columns = [
            torch.broadcast_to(torch.as_tensor(p), shape).reshape(-1).tolist() for p in parts
        ]
        first: dict[tuple, int] = {}
        xs, ys = [], []
        for x, value in enumerate(zip(*columns) if columns else [()] * n):
            y = first.setdefault(tuple(value), x)
            if y != x:
                xs.append(x)
                ys.append(y)
        rows = np.zeros((len(xs), n))
        rows[np.arange(len(xs)), xs] = 1.0
        rows[np.arange(len(xs)), ys] = -1.0
        return rows
    if declares == "layout":  # a tie declared only by its layout: nothing independent to check
        raise TieTypeError(f"{tie!r} declares no key or relations, only a layout")
    blocks = []
    entries = np.arange(n)
    for relation, sign in relation_list(tie, tie.relations(*idx), tie.sign(*idx)):
        targets = [
            np.broadcast_to(np.asarray(torch.as_tensor(t)), shape).reshape(-1).astype(np.int64)
            for t in relation
        ]
        s = np.broadcast_to(np.asarray(torch.as_tensor(sign)), shape).reshape(-1)
        wrapped = _wrap(targets, shape, tie)
        partner = np.ravel_multi_index(wrapped, shape) if shape else np.zeros(n, dtype=np.intp)
        rows = np.zeros((n, n))
        rows[entries, entries] += 1.0
        rows[entries, partner] -= s.astype(np.float64)
        blocks.append(rows[rows.any(axis=1)])
    return np.concatenate(blocks) if blocks else np.zeros((0, n))


def _wrap(targets: list[np.ndarray], shape: tuple[int, ...], tie: Tie) -> list[np.ndarray]:
    """Python-style wrapping of negative indices; anything else out of range is refused (the
    first such entry, in order, is named)."""
    out = [(t < -size) | (t >= size) for t, size in zip(targets, shape)]
    if out and np.any(out):
        x = int(np.flatnonzero(np.any(out, axis=0))[0])
        d = next(d for d in range(len(shape)) if out[d][x])
        size = shape[d]
        raise DeclarationError(
            f"{tie!r}: relation index {targets[d][x]} is outside [-{size}, {size})"
        )
    return [t % size for t, size in zip(targets, shape)]


def constraint_matrix(tie: Tie, shape: tuple[int, ...]) -> np.ndarray:
    """The dense matrix ``C`` (rows: declared relations) whose null space is the tied space."""
    return _matrix_of(tie, tuple(shape))


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
    if not c.size:
        return n
    with one_thread():  # an SVD with the tolerance of numpy's matrix_rank
        return n - int(torch.linalg.matrix_rank(torch.from_numpy(c)))

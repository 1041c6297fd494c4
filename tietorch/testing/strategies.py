"""Hypothesis strategies for writing your own properties of a tie.

They compose with any ``@given`` test:

* :func:`shapes_for` — small shapes the tie applies to (its ``check_shape`` accepts them and its
  declaration evaluates on their rank);
* :func:`thetas` — free vectors for a :class:`~tietorch.TieLayout` (finite floats);
* :func:`tensors_satisfying` — tensors that satisfy a tie (a drawn free vector, materialized).

Example:
    >>> import torch
    >>> from hypothesis import given, settings
    >>> from tietorch import Symmetric
    >>> from tietorch.testing.strategies import shapes_for, tensors_satisfying
    >>> @settings(max_examples=10)
    ... @given(tensors_satisfying(Symmetric(), shapes_for(Symmetric(), max_side=4, max_dims=2)))
    ... def test_symmetric_weights_are_symmetric(w):
    ...     assert torch.equal(w, w.transpose(0, 1))
    >>> test_symmetric_weights_are_symmetric()
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from .._tie import Tie, TieLayout
from ..errors import ArgumentError, TieTypeError

__all__ = ["shapes_for", "tensors_satisfying", "thetas"]

Shape = tuple[int, ...]

_PROBES_PER_RANK = 3  # shapes tried per rank to decide whether the declaration fits that rank
_MAX_CANDIDATES_PER_RANK = 20_000  # beyond this, a fixed random sample of the rank's box


def _as_shape(shape: Sequence[int]) -> Shape:
    return tuple(int(s) for s in shape)


def _refusal(tie: Tie, shape: Shape) -> Exception | None:
    """The exception ``tie.check_shape(shape)`` raises, or None if the shape is accepted."""
    try:
        tie.check_shape(shape)
    except Exception as error:  # check_shape should raise ValueError; be lenient with others
        return error
    return None


def _declaration_error(tie: Tie, shape: Shape) -> Exception | None:
    """The exception evaluating the tie's declaration on ``shape`` raises, or None.

    A tie declared only by its ``layout`` has no declaration: always None.
    """
    try:
        if tie._declares() != "layout":
            tie._constraints(shape)
    except Exception as error:
        return error
    return None


def _candidates(ndim: int, max_side: int) -> list[Shape]:
    if max_side**ndim <= _MAX_CANDIDATES_PER_RANK:
        return list(itertools.product(range(1, max_side + 1), repeat=ndim))
    rng = random.Random(ndim)  # deterministic
    draws = range(_MAX_CANDIDATES_PER_RANK)
    return list({tuple(rng.randint(1, max_side) for _ in range(ndim)) for _ in draws})


def _shapes_by_rank(tie: Tie, max_side: int, max_dims: int) -> dict[int, list[Shape]]:
    """Accepted shapes of each plausible rank, smallest first; raises if there are none.

    A rank is plausible when the declaration evaluates on one of its first few accepted shapes:
    this drops, e.g., rank 1 for ``Tie.from_relation(lambda i, j: (j, i))``, which has no
    ``check_shape`` but cannot be called with one index grid.
    """
    if not isinstance(tie, Tie):
        raise TieTypeError(f"expected a tietorch.Tie, got {type(tie).__name__}")
    if max_side < 1 or max_dims < 1:
        raise ArgumentError(f"max_side and max_dims must be >= 1, got {max_side}, {max_dims}")
    by_rank: dict[int, list[Shape]] = {}
    last_error: tuple[Shape, Exception] | None = None
    for ndim in range(1, max_dims + 1):
        accepted = []
        for shape in _candidates(ndim, max_side):
            error = _refusal(tie, shape)
            if error is None:
                accepted.append(shape)
            else:
                last_error = (shape, error)
        accepted.sort(key=lambda s: (math.prod(s), s))
        for shape in accepted[:_PROBES_PER_RANK]:
            error = _declaration_error(tie, shape)
            if error is None:
                by_rank[ndim] = accepted
                break
            last_error = (shape, error)
    if not by_rank:
        why = ""
        if last_error is not None:
            shape, error = last_error
            why = f" (e.g. {shape}: {type(error).__name__}: {error})"
        raise ArgumentError(
            f"no shape with 1 to {max_dims} dims of sizes 1 to {max_side} fits {tie!r}: none is "
            f"accepted by its check_shape and evaluates its declaration{why}. Pass the shapes to "
            f"check explicitly, e.g. check_tie(tie, shapes=[(4, 4, 3, 3)]), or widen "
            f"shapes_for(tie, max_side=..., max_dims=...)"
        )
    return by_rank


def shapes_for(tie: Tie, max_side: int = 5, max_dims: int = 4) -> SearchStrategy[Shape]:
    """Small shapes ``tie`` applies to: 1 to ``max_dims`` dims of sizes 1 to ``max_side``.

    Every shape in that box is offered to ``tie.check_shape``; the accepted ones of each rank on
    which the tie's declaration (key / relations) evaluates are kept. The strategy first picks a
    rank, then a shape of that rank, and shrinks towards fewer dims and fewer entries.

    Raises ``ValueError`` (asking for explicit shapes) when no shape in the box fits.

    Example:
        >>> from hypothesis import given, settings
        >>> from tietorch import Circulant, SymmetricFlip
        >>> @settings(max_examples=20)
        ... @given(shapes_for(SymmetricFlip(), max_side=3))
        ... def test_conv_weight_shapes(shape):
        ...     assert len(shape) == 4 and shape[0] == shape[1]
        >>> test_conv_weight_shapes()
        >>> @settings(max_examples=20)
        ... @given(shapes_for(Circulant(), max_dims=3))
        ... def test_square_matrices(shape):
        ...     assert len(shape) >= 2 and shape[-1] == shape[-2]
        >>> test_square_matrices()
    """
    by_rank = _shapes_by_rank(tie, int(max_side), int(max_dims))
    return st.one_of(*(st.sampled_from(by_rank[r]) for r in sorted(by_rank)))


def thetas(
    layout: TieLayout,
    *,
    dtype: torch.dtype = torch.float32,
    elements: SearchStrategy[float] | None = None,
) -> SearchStrategy[Tensor]:
    """Free vectors for ``layout``: 1-D tensors of length ``layout.n_free`` with finite values.

    ``elements`` draws each value (default: floats in [-100, 100], no NaN or infinity);
    Hypothesis shrinks them towards 0. ``dtype``: the tensor's floating dtype.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> from tietorch import Toeplitz
        >>> layout = Toeplitz().layout((3, 4))
        >>> @settings(max_examples=20)
        ... @given(thetas(layout, dtype=torch.float64))
        ... def test_project_inverts_materialize(theta):
        ...     assert theta.shape == (6,)
        ...     assert torch.allclose(layout.project(layout.materialize(theta)), theta)
        >>> test_project_inverts_materialize()
    """
    if not dtype.is_floating_point:
        raise TieTypeError(f"thetas: dtype must be a floating dtype, got {dtype}")
    if elements is None:
        elements = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
    return arrays(np.float64, int(layout.n_free), elements=elements).map(
        lambda values: torch.from_numpy(values).to(dtype)
    )


def tensors_satisfying(
    tie: Tie,
    shape: Sequence[int] | SearchStrategy[Shape],
    *,
    dtype: torch.dtype = torch.float32,
    elements: SearchStrategy[float] | None = None,
) -> SearchStrategy[Tensor]:
    """Tensors of ``shape`` that satisfy ``tie``: ``tie.layout(shape).materialize(theta)``.

    ``shape`` is a shape or a strategy of shapes (e.g. :func:`shapes_for`); ``dtype`` and
    ``elements`` are passed to :func:`thetas`.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> from tietorch import Antisymmetric
        >>> @settings(max_examples=20)
        ... @given(tensors_satisfying(Antisymmetric(), (4, 4)))
        ... def test_antisymmetric(w):
        ...     assert torch.equal(w, -w.T) and not w.diagonal().any()
        >>> test_antisymmetric()
    """
    if isinstance(shape, SearchStrategy):
        return shape.flatmap(lambda s: tensors_satisfying(tie, s, dtype=dtype, elements=elements))
    layout = tie.layout(_as_shape(shape))
    return thetas(layout, dtype=dtype, elements=elements).map(layout.materialize)

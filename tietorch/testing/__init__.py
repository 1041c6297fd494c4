"""Property-test a tie in one line: ``check_tie(tie)``; Hypothesis strategies for your own.

Needs Hypothesis, which ``import tietorch`` does not: ``pip install "tietorch[testing]"``.

:func:`check_tie` draws shapes spread over the sizes the tie accepts (several per example) and
random free vectors, and checks that the tie's layout is well formed, satisfies the tie's
declared key / relations, has exactly as many free parameters as the declared constraints leave
(dense rank; tietorch's solver on shapes too large for it), projects orthogonally and passes
gradients to every free parameter. It returns a :class:`CheckReport` of what it checked.
Use it from a plain pytest test (not inside a ``@given`` test)::

    from tietorch.testing import check_tie

    def test_my_tie():
        check_tie(MyTie())                       # shapes from MyTie.check_shape
        check_tie(MyTie(), shapes=[(4, 4, 3, 3)], max_examples=20)

Write a hand-made closed-form ``layout()`` *alongside* the ``key`` or ``relations`` it implements:
check_tie then checks the closed form against that declaration. A tie that overrides only
``layout`` can only be checked for well-formedness, projection and gradients.

:func:`check_equivariance` checks that a module commutes with a group action on inputs.

:mod:`tietorch.testing.strategies` has the building blocks: ``shapes_for(tie)``,
``thetas(layout)`` and ``tensors_satisfying(tie, shape)``.

Example:
    >>> from tietorch import KernelSymmetry
    >>> from tietorch.testing import check_tie
    >>> print(check_tie(KernelSymmetry("D4"), max_examples=10))  # doctest: +ELLIPSIS
    check_tie passed: KernelSymmetry('D4'), 10 examples on ... shapes (2 to 4 dims, ...
"""

try:
    import hypothesis  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'tietorch.testing needs Hypothesis, which is not installed: pip install "tietorch[testing]"'
    ) from error

from . import strategies
from ._check import RANK_CHECK_MAX_NUMEL, SHAPES_PER_EXAMPLE, check_tie
from ._equivariance import check_equivariance, field_action
from ._report import CheckReport, Minimality, ShapeReport

__all__ = [
    "RANK_CHECK_MAX_NUMEL",
    "SHAPES_PER_EXAMPLE",
    "CheckReport",
    "Minimality",
    "ShapeReport",
    "check_equivariance",
    "check_tie",
    "field_action",
    "strategies",
]

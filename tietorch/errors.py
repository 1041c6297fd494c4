"""The errors tietorch raises on purpose, one small hierarchy.

Every class also derives from the built-in exception that was raised before it existed
(``ValueError`` or ``TypeError``), so ``except ValueError`` clauses written against earlier
versions keep working. Catch :class:`TietorchError` to catch them all.

Example:
    >>> from tietorch.errors import ShapeError, TietorchError
    >>> issubclass(ShapeError, TietorchError), issubclass(ShapeError, ValueError)
    (True, True)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DeclarationError",
    "ShapeError",
    "TargetError",
    "TieTypeError",
    "TietorchError",
]


class TietorchError(Exception):
    """Base class of every error tietorch raises on purpose."""


class DeclarationError(TietorchError, ValueError):
    """A tie's declaration is malformed: what ``key``/``relations``/``sign``/``layout`` return
    does not have the form, dtype or range a tie must have, or it contradicts itself."""


class ShapeError(TietorchError, ValueError):
    """A shape that a tie or a layer refuses, or one whose index space cannot fit in memory."""


class TieTypeError(TietorchError, TypeError):
    """An argument of the wrong type (a string where a module is expected, a bool as a count)."""


class TargetError(TietorchError, ValueError):
    """The tensor or module cannot be tied (or untied) this way: a Parameter shared between
    modules, a buffer its module updates in place, an inference-mode tensor, a member of a
    group removed on its own, ..."""


class CheckpointError(TietorchError, ValueError):
    """A state dict that does not fit the tied model: wrong sizes, a changed tie, a dense
    checkpoint given to ``load_state_dict`` of a tied model."""

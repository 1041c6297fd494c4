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

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ArgumentError",
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


class ArgumentError(TietorchError, ValueError):
    """An argument value a constructor or a call refuses: a count below 1, an unknown group
    name, a padding a layer cannot apply, a tie a layer cannot use."""


class CheckpointError(TietorchError, ValueError):
    """A state dict that does not fit the tied model: wrong sizes, a changed tie, a dense
    checkpoint given to ``load_state_dict`` of a tied model."""


@contextmanager
def _context(where: str) -> Iterator[None]:
    """Prefix the message of an error raised inside with ``where`` (the public call, the tensor,
    the shape), keeping its class and its ``except ValueError``/``TypeError`` base. Used once
    per public call, so a message gets its context exactly once.
    """
    try:
        yield
    except (ValueError, TypeError) as error:
        raise _with_prefix(error, where) from error


def _with_prefix(error: Exception, where: str) -> Exception:
    cls = type(error)
    try:
        new = cls(f"{where}: {error}")
    except Exception:  # an exception class with another constructor: wrap it
        new = (DeclarationError if isinstance(error, ValueError) else TieTypeError)(
            f"{where}: {error}"
        )
    return new

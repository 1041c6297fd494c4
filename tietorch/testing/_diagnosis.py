"""How check_tie words what it found: entries as ``W[i, j]``, numbers, the context of a count
mismatch, and the user's exceptions turned into assertion errors that name the tie and shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import numpy as np
from torch import Tensor

from .._tie import TieLayout

__all__: list[str] = []

Shape = tuple[int, ...]
_T = TypeVar("_T")


def _fail(message: str) -> NoReturn:
    raise AssertionError(message)


def _entry(flat: int, shape: Shape) -> str:
    if not shape:
        return "W[()]"
    coords = np.unravel_index(int(flat), shape)
    return "W[" + ", ".join(str(int(c)) for c in coords) + "]"


def _num(value: float | Tensor) -> str:
    return f"{float(value):.4g}"


def _max(values: Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def _first(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _call(where: str, what: str, fn: Callable[..., _T], *args: Any, hint: bool = False) -> _T:
    """``fn(*args)``; an exception from the user's code becomes an AssertionError with context."""
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as error:
        if _raised_by_tie_layout_constructor(error):
            message = (
                f"{where}: the layout is malformed: {what} built a TieLayout that its "
                f"constructor refuses: {error}"
            )
        else:
            extra = ""
            if hint:
                extra = (
                    ". If the tie does not apply to this shape, make its check_shape refuse it "
                    "(or pass shapes= to check_tie)"
                )
            message = f"{where}: {what} raised {type(error).__name__}: {error}{extra}"
        raise AssertionError(message) from error


def _raised_by_tie_layout_constructor(error: Exception) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is TieLayout.__init__.__code__


def _count_context(n_free: int, dim: int | None) -> str:
    if dim is None:
        return ""
    if n_free > dim:
        return (
            f" The layout has n_free = {n_free} but the declared constraints have a "
            f"{dim}-dimensional solution space: it ties too little (under-ties)."
        )
    if n_free == dim:
        return (
            f" n_free = {n_free} is the dimension of the declared solution space, so the layout "
            f"ties the wrong entries together, or with the wrong signs."
        )
    return (
        f" The layout has n_free = {n_free}, less than the dimension {dim} of the declared "
        f"solution space: it ties the wrong entries and too many of them."
    )

"""``TIE`` expressions over the built-in ties, parsed with :mod:`ast`, never evaluated.

Only calls of tietorch's tie classes with literal arguments, combined with ``&``, are accepted.

Example:
    >>> parse_tie("Symmetric() & Toeplitz()")
    Symmetric(dims=(0, 1)) & Toeplitz(dims=(-2, -1))
    >>> parse_tie("KernelSymmetry('D4')").layout((3, 3)).n_free
    3
    >>> parse_shape("4,4,3,3")
    (4, 4, 3, 3)
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import re
from typing import Any

from .._tie import AllOf, Tie
from ._errors import CLIError

__all__ = [
    "builtin_ties",
    "literal_arguments",
    "parse_shape",
    "parse_tie",
    "signature_text",
]

MAX_EXPRESSION_CHARS = 1000


def builtin_ties() -> dict[str, type[Tie]]:
    """The tie classes a ``TIE`` expression may name: tietorch's exported built-in ties."""
    import tietorch.ties

    found: dict[str, type[Tie]] = {}
    for module in (tietorch.ties, tietorch):
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            # AllOf is the result of `a & b`, written with & in an expression
            if isinstance(obj, type) and issubclass(obj, Tie) and obj not in (Tie, AllOf):
                found[name] = obj
    return found


def parse_tie(text: str) -> Tie:
    """Build a tie from an expression over the built-in ties, without evaluating any code.

    Allowed: a built-in tie class, called or not (``SymmetricFlip`` is ``SymmetricFlip()``),
    optionally as ``tietorch.X``, with literal arguments (numbers, strings, tuples, lists...),
    and ``a & b``. Anything else is refused with a :class:`CLIError`.

    >>> parse_tie("SymmetricFlip(sign=-1)")
    SymmetricFlip(dims=(0, 1), flip=(2, 3), sign=-1)
    >>> parse_tie("__import__('os')")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tietorch.cli.CLIError: unknown tie '__import__'; built-in ties: Antisymmetric, ...
    """
    text = text.strip()
    if not text:
        raise CLIError("empty tie expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CLIError(f"tie expression too long ({len(text)} > {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        message = getattr(error, "msg", None) or str(error) or type(error).__name__
        raise CLIError(
            f"cannot parse the tie expression {text!r} ({message}); expected e.g. "
            '"KernelSymmetry(\'D4\')", "Symmetric() & Toeplitz()" or MODULE:ATTR'
        ) from None
    return _build_tie(tree.body, builtin_ties())


def _build_tie(node: ast.expr, known: dict[str, type[Tie]]) -> Tie:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
        left, right = _build_tie(node.left, known), _build_tie(node.right, known)
        return left & right
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _instantiate(_tie_class(node, known), [], {})
    if isinstance(node, ast.Call):
        cls = _tie_class(node.func, known)
        args, kwargs = literal_arguments(node, cls.__name__)
        return _instantiate(cls, args, kwargs)
    raise CLIError(
        f"not allowed in a tie expression: {ast.unparse(node)!r}; use built-in ties called "
        "with literal arguments, combined with &, or MODULE:ATTR for your own tie"
    )


def _tie_class(node: ast.expr, known: dict[str, type[Tie]]) -> type[Tie]:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "tietorch":  # tietorch.SymmetricFlip(...)
            node = ast.Name(id=node.attr)
    if not isinstance(node, ast.Name):
        raise CLIError(
            f"not allowed in a tie expression: {ast.unparse(node)!r}; name a built-in tie "
            f"({', '.join(sorted(known))}) or use MODULE:ATTR for your own"
        )
    if node.id not in known:
        close = difflib.get_close_matches(node.id, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CLIError(
            f"unknown tie {node.id!r}; {hint}built-in ties: {', '.join(sorted(known))} "
            "(or MODULE:ATTR for your own)"
        )
    return known[node.id]


def literal_arguments(call: ast.Call, callee: str) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of ``call``, each a literal (``ast.literal_eval``:
    numbers, strings, tuples, lists, dicts, sets, None, booleans); anything else is refused."""
    args = []
    for arg in call.args:
        if isinstance(arg, ast.Starred):
            raise CLIError(f"not allowed in a tie expression: {ast.unparse(arg)!r}")
        args.append(_literal(arg, callee))
    kwargs = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise CLIError(f"not allowed in a tie expression: **{ast.unparse(keyword.value)}")
        kwargs[keyword.arg] = _literal(keyword.value, callee)
    return args, kwargs


def _literal(node: ast.expr, callee: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise CLIError(
            f"{callee}: arguments must be literals (numbers, strings, tuples, lists), "
            f"got {ast.unparse(node)!r}"
        ) from None


def _instantiate(cls: type[Tie], args: list[Any], kwargs: dict[str, Any]) -> Tie:
    try:
        return cls(*args, **kwargs)
    except TypeError as error:
        raise CLIError(f"bad arguments for {cls.__name__}{signature_text(cls)}: {error}") from None
    except (ValueError, OverflowError) as error:
        raise CLIError(str(error)) from None


def signature_text(obj: Any) -> str:
    """``(dims, flip=(2, 3))``: the call signature without annotations."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parameters = [
        p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,4,3,3"`` (or ``4x4x3x3``, ``(4, 4, 3, 3)``) as a tuple of positive ints."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("()[]"))]
    if parts and parts[-1] == "" and len(parts) > 1:  # "5," is the 1-d shape (5,)
        parts.pop()
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: expected positive integers separated by commas, e.g. 4,4,3,3"
        )
    return tuple(int(p) for p in parts)

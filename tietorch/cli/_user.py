"""``MODULE:ATTR``: a user's tie, imported from a module on the path or a ``file.py``.

The attribute may be a :class:`~tietorch.Tie` instance, a ``Tie`` subclass or a zero-argument
callable returning one; ``attr`` may be dotted. ``MODULE:ATTR(args)`` calls it with literal
arguments (``my_ties:NeedsArgs(2, sign=-1)``), parsed with :mod:`ast`: nothing is evaluated.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._tie import Tie
from ._errors import CLIError
from ._expression import MAX_EXPRESSION_CHARS, literal_arguments, parse_tie, signature_text

__all__ = ["as_tie", "call_tie", "load_object", "resolve_tie"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# MODULE (dotted, or a path ending in .py) : ATTR (dotted), optionally followed by "(...)"
_SPEC = re.compile(r"(?P<module>[^:()]+?):(?P<attr>[A-Za-z_][\w.]*)(?P<call>\s*\(.*)?", re.DOTALL)


@dataclass(frozen=True)
class _ImportSpec:
    module: str
    attr: str
    args: list[Any] | None  # None: not called (ATTR); a list: ATTR(args, **kwargs)
    kwargs: dict[str, Any]


def _import_spec(text: str) -> _ImportSpec | None:
    """``text`` as ``MODULE:ATTR`` or ``MODULE:ATTR(args)``, or None if it is not one."""
    match = _SPEC.fullmatch(text.strip())
    if match is None or not _DOTTED.fullmatch(match["attr"]):
        return None
    module = match["module"].strip()
    if not (_DOTTED.fullmatch(module) or module.endswith(".py")):
        return None
    if match["call"] is None:
        return _ImportSpec(module, match["attr"], None, {})
    call_text = match["attr"] + match["call"]
    if len(call_text) > MAX_EXPRESSION_CHARS:
        raise CLIError(f"tie expression too long ({len(call_text)} > {MAX_EXPRESSION_CHARS})")
    try:
        call = ast.parse(call_text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        message = getattr(error, "msg", None) or str(error) or type(error).__name__
        raise CLIError(
            f"cannot parse the arguments of {text.strip()!r} ({message}); expected e.g. "
            "my_ties:NeedsArgs(2, sign=-1) with literal arguments"
        ) from None
    if not isinstance(call, ast.Call) or ast.unparse(call.func) != match["attr"]:
        raise CLIError(
            f"not allowed after MODULE:ATTR in {text.strip()!r}: only one call with literal "
            "arguments, e.g. my_ties:NeedsArgs(2, sign=-1)"
        )
    args, kwargs = literal_arguments(call, f"{module}:{match['attr']}")
    return _ImportSpec(module, match["attr"], args, kwargs)


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while importing (as ``python -m`` does for the current
    directory, and ``python file.py`` for the file's directory), then removed again."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file as a module (registered in ``sys.modules``, which e.g. dataclasses
    need), with its directory on ``sys.path`` so its own imports work."""
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    name = path.stem if path.stem not in sys.modules else f"_tietorch_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path(str(path.resolve().parent)):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_object(module_name: str, attr: str) -> Any:
    """Import ``module_name`` and return its ``attr`` (dotted; the module may be a ``.py``
    path)."""
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            with _on_path(os.getcwd()):
                module = importlib.import_module(module_name)
    except Exception as error:  # importing runs the user's code: any error is an import error
        raise CLIError(f"cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def call_tie(obj: Any, spec: str, args: list[Any], kwargs: dict[str, Any]) -> Tie:
    """``obj(*args, **kwargs)``, which must give a tie (``spec`` names it in errors)."""
    name = getattr(obj, "__name__", spec)
    if not callable(obj):
        raise CLIError(f"{spec}: {name} is a {type(obj).__name__}, which cannot be called")
    try:
        value = obj(*args, **kwargs)
    except TypeError as error:
        raise CLIError(f"{spec}: bad arguments for {name}{signature_text(obj)}: {error}") from None
    except Exception as error:
        raise CLIError(f"{spec}: calling {name} raised {type(error).__name__}: {error}") from None
    if not isinstance(value, Tie):
        raise CLIError(f"{spec}: {name}(...) returned a {type(value).__name__}, not a tietorch.Tie")
    return value


def as_tie(obj: Any, spec: str) -> Tie:
    """A tie from what ``spec`` named: a Tie, a Tie subclass, or a zero-arg callable."""
    if isinstance(obj, Tie):
        return obj
    if not callable(obj):
        raise CLIError(
            f"{spec} is a {type(obj).__name__}, not a tietorch.Tie (nor a Tie subclass or a "
            "zero-argument function returning one)"
        )
    name = getattr(obj, "__name__", spec)
    if isinstance(obj, type) and not issubclass(obj, Tie):
        raise CLIError(f"{spec} is the class {name}, which is not a tietorch.Tie subclass")
    try:
        value = obj()
    except TypeError as error:
        raise CLIError(
            f"{spec}: cannot call {name}{signature_text(obj)} without arguments ({error}); point "
            "MODULE:ATTR at a tie instance or a zero-argument function returning one"
        ) from None
    except Exception as error:
        raise CLIError(f"{spec}: calling {name}() raised {type(error).__name__}: {error}") from None
    if not isinstance(value, Tie):
        raise CLIError(f"{spec}: {name}() returned a {type(value).__name__}, not a tietorch.Tie")
    return value


def resolve_tie(text: str) -> Tie:
    """A tie from a ``TIE`` argument: ``module:attr`` or ``module:attr(literal args)``
    (imported), or an expression over the built-in ties."""
    spec = _import_spec(text)
    if spec is None:
        return parse_tie(text)
    obj = load_object(spec.module, spec.attr)
    if spec.args is None:
        return as_tie(obj, text.strip())
    if isinstance(obj, Tie):
        raise CLIError(f"{text.strip()}: {spec.attr} is already a tie; it takes no arguments")
    if isinstance(obj, type) and not issubclass(obj, Tie):
        raise CLIError(f"{text.strip()}: the class {spec.attr} is not a tietorch.Tie subclass")
    return call_tie(obj, text.strip(), spec.args, spec.kwargs)

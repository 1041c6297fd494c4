"""``MODULE:ATTR``: a user's tie, imported from a module on the path or a ``file.py``.

The attribute may be a :class:`~tietorch.Tie` instance, a ``Tie`` subclass or a zero-argument
callable returning one; ``attr`` may be dotted.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._tie import Tie
from ._errors import CLIError
from ._expression import parse_tie, signature_text

__all__ = ["as_tie", "load_object", "resolve_tie"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _is_import_spec(text: str) -> bool:
    module, sep, attr = text.strip().rpartition(":")
    if not sep or not _DOTTED.fullmatch(attr):
        return False
    return bool(_DOTTED.fullmatch(module)) or module.endswith(".py")


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


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted; ``module`` may be a ``.py`` path)."""
    module_name, _, attr = spec.strip().rpartition(":")
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
    """A tie from a ``TIE`` argument: ``module:attr`` (imported) or a built-in expression."""
    if _is_import_spec(text):
        return as_tie(load_object(text), text.strip())
    return parse_tie(text)

"""The public modules of tietorch and their public names: what the API reference documents and
what must carry a docstring. Shared by the page generator and the build hook."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import tietorch


def public_modules() -> list[ModuleType]:
    """``tietorch`` and every importable submodule none of whose name parts starts with ``_``
    (optional ones whose extra is missing are skipped by their ImportError)."""
    found = [tietorch]
    for info in pkgutil.walk_packages(tietorch.__path__, "tietorch."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ImportError:
            continue
    return found


def public_names(module: ModuleType) -> list[str]:
    """The module's ``__all__`` (every public module declares one)."""
    names = getattr(module, "__all__", None)
    if names is None:
        raise RuntimeError(f"{module.__name__} has no __all__: declare its public names")
    return list(names)


def missing_docstrings() -> list[str]:
    """Public modules and public names (their ``__all__``) without a docstring of their own."""
    missing = []
    for module in public_modules():
        if not (module.__doc__ or "").strip():
            missing.append(module.__name__)
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not _documentable(obj):
                continue
            if not (getattr(obj, "__doc__", None) or "").strip():
                missing.append(f"{module.__name__}.{name}")
    return sorted(set(missing))


def undocumented_members() -> list[str]:
    """Public methods and properties of public classes with no docstring, neither their own
    nor one of the method they override (which the reference shows for them)."""
    missing = []
    for module in public_modules():
        for name in public_names(module):
            cls = getattr(module, name)
            if not inspect.isclass(cls) or not cls.__module__.startswith("tietorch"):
                continue
            for attr, member in vars(cls).items():
                if attr.startswith("_"):
                    continue
                function = member.fget if isinstance(member, property) else member
                function = getattr(function, "__func__", function)
                if not inspect.isfunction(function) or (function.__doc__ or "").strip():
                    continue
                inherited = any(
                    (getattr(getattr(base, attr, None), "__doc__", None) or "").strip()
                    for base in cls.__mro__[1:]
                )
                if not inherited:
                    missing.append(f"{cls.__module__}.{cls.__qualname__}.{attr}")
    return sorted(set(missing))


def _documentable(obj: object) -> bool:
    """Functions and classes carry docstrings; constants (ints, tuples...) are documented by
    the ``#:`` comment above them."""
    return inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)

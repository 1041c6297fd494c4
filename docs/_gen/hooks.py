"""mkdocs hook: the build fails when a public module or a public name (an ``__all__`` entry) has
no docstring, which mkdocstrings would render as an empty entry without a warning; so does a
public method or property without a docstring of its own or of the method it overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_api import missing_docstrings, undocumented_members


def on_pre_build(config: Any) -> None:
    missing = missing_docstrings() + undocumented_members()
    if missing:
        from mkdocs.exceptions import PluginError

        raise PluginError(
            "public names without a docstring (write one; the API reference is built from "
            "them):\n  " + "\n  ".join(missing)
        )

"""mkdocs hooks: the build fails when a public module or a public name (an ``__all__`` entry) has
no docstring, which mkdocstrings would render as an empty entry without a warning; so does a
public method or property without a docstring of its own or of the method it overrides. The
``nav:`` of mkdocs.yml lists the generated API pages; one whose module was not generated (an
optional integration whose extra is not installed) is dropped from it, rather than failing the
strict build with a link to a missing page."""

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


def on_files(files: Any, config: Any) -> Any:
    """Drop from the nav the API pages that gen_pages.py did not generate (it runs first: hooks
    come after the plugins)."""
    config["nav"] = _prune_api_pages(config["nav"], files)
    return files


def _prune_api_pages(items: Any, files: Any) -> Any:
    if not isinstance(items, list):
        return items
    kept = []
    for item in items:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, str) and value.startswith("api/"):
                if files.get_file_from_path(value) is None:
                    continue
            else:
                value = _prune_api_pages(value, files)
            item = {title: value}
        kept.append(item)
    return kept

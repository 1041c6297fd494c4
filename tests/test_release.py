"""Release hygiene checked in the suite as well as by the docs build: every public module and
public name has a docstring, and the package metadata names its license and typing marker."""

import sys
from pathlib import Path

import pytest

import tietorch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_gen"))

from public_api import missing_docstrings, public_modules, undocumented_members  # noqa: E402


def test_every_public_name_has_a_docstring():
    assert missing_docstrings() == []


def test_every_public_method_and_property_has_a_docstring():
    assert undocumented_members() == []


def test_public_modules_include_the_documented_ones():
    names = {m.__name__ for m in public_modules()}
    assert {"tietorch", "tietorch.testing", "tietorch.testing.strategies", "tietorch.cli"} <= names
    assert not any(part.startswith("_") for name in names for part in name.split("."))


def test_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "Typing :: Typed" in project["classifiers"]
    assert (Path(tietorch.__file__).parent / "py.typed").is_file()
    assert project["scripts"]["tietorch"] == "tietorch.cli:main"

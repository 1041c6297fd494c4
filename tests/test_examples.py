"""Every script in examples/ runs with --quick and passes its own checks (exit code 0)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.py")
    if not p.name.startswith("_")  # shared helpers, not examples
)


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_quick(script):
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=script.parent,
    )
    assert result.returncode == 0, (
        f"{script.name} --quick exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )

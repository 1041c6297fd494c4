"""``tietorch bench``: ``python -m benchmarks`` in the source checkout, streamed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import tietorch

from ._errors import CLIError

__all__ = ["benchmarks_dir", "cmd_bench"]


def benchmarks_dir() -> Path:
    """Where a source checkout keeps the benchmarks: ``benchmarks/`` next to the package."""
    return Path(tietorch.__file__).resolve().parent.parent / "benchmarks"


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks of the checkout the package comes from; their exit code."""
    folder = benchmarks_dir()
    if not (folder / "__main__.py").is_file():
        raise CLIError(
            f"no benchmarks at {folder}: they ship with the source checkout, not with the "
            "installed package. Clone the repository, `pip install -e .` it, and run "
            "`tietorch bench` (or `python -m benchmarks`) there"
        )
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])]
    print(f"running `python {' '.join(command[1:])}` in {folder.parent}", flush=True)
    sys.stderr.flush()
    try:
        return subprocess.run(command, cwd=folder.parent, check=False).returncode
    except KeyboardInterrupt:
        return 130

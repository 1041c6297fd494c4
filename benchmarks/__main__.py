"""Run every benchmark: ``python -m benchmarks [--quick]``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

MODULES = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for name in MODULES:
        print(f"=== {name} ===", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(argv)
        print(flush=True)


if __name__ == "__main__":
    main()

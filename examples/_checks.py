"""What every example shares: named checks, printed as they run, and the exit code they give."""

from __future__ import annotations

FAILURES: list[str] = []


def check(name: str, ok: bool) -> None:
    """Print a check's outcome and remember failures for the exit code."""
    print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    if not ok:
        FAILURES.append(name)


def verdict() -> int:
    """Print the overall outcome; the exit code: 1 if any check failed."""
    print("FAILED: " + "; ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


def setup(argv: list[str] | None, doc: str) -> bool:
    """Parse ``--quick``, fix the seed and use one thread; return whether the run is quick.

    One thread: these layers are small, and one thread is the fastest and steadiest on a busy CPU.
    """
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    quick = parser.parse_args(argv).quick
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return quick

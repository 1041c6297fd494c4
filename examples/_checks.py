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

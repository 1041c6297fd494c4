"""The error every command reports as ``tietorch <command>: error: <message>``."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """An error reported as ``tietorch <command>: error: <message>`` with exit code ``code``
    (2: a usage or setup error, the default; 1: a failure while running)."""

    __module__ = "tietorch.cli"  # its public home (tracebacks and docs name it there)

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code

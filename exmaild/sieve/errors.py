"""Errors of the Sieve engine: every problem with a script is a SieveError."""

from __future__ import annotations


class SieveError(Exception):
    """A script that cannot be parsed or run; says `line N, column C` when known."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        self.message = message
        self.line = line
        self.col = col
        where = ""
        if line is not None:
            where = f"line {line}" + (f", column {col}" if col is not None else "") + ": "
        super().__init__(where + message)


class SieveRuntimeError(SieveError):
    """Evaluation failed (a limit was reached, conflicting actions ...): the
    message falls back to implicit keep."""

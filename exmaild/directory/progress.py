"""How far a CSV import is, for the admin API's jobs and exmailctl's bar.

An import first checks every row (nothing written), then applies them all in
one transaction; a `Progress` counts the rows of the current phase. The
import writes it (the reactor while checking, a database thread while
applying) and whoever shows it reads it: plain attribute updates, no lock.
"""

from __future__ import annotations

import csv
import io
from typing import Any

CHECKING, APPLYING = "checking", "applying"
_YIELD_EVERY = 100  # rows checked on the reactor between two turns of it


def count_rows(text: str) -> int:
    """The data rows of a CSV (what csv.DictReader will yield)."""
    try:
        return max(0, sum(1 for row in csv.reader(io.StringIO(text)) if row) - 1)
    except csv.Error:
        return 0  # the import itself reports the bad line


class Progress:
    def __init__(self, reactor: Any = None) -> None:
        self.reactor = reactor
        self.phase = "queued"
        self.total = 0
        self.done = 0

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done = phase, total, 0

    async def checked(self) -> None:
        """One row checked; now and then lets the reactor answer others."""
        self.done += 1
        if self.reactor is not None and self.done % _YIELD_EVERY == 0:
            from twisted.internet import task

            await task.deferLater(self.reactor, 0, lambda: None)

    def applied(self) -> None:
        self.done += 1

    @property
    def fraction(self) -> float:
        """Both phases together, 0.0 to 1.0 (checking is the first half)."""
        if self.total <= 0:
            return 0.0
        half = min(self.done, self.total) / self.total / 2
        return half + (0.5 if self.phase == APPLYING else 0.0)


class NoProgress(Progress):
    """What an import reports to when nobody watches."""

    async def checked(self) -> None:
        return None

    def applied(self) -> None:
        return None

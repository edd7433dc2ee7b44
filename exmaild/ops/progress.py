"""A progress bar on stderr: redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW = 0.1  # seconds between redraws on a terminal
PLAIN_EVERY = 10.0  # seconds between plain progress lines (logs, pipes)


class Progress:
    def __init__(self, label: str, total: int, unit: str = "msgs",
                 stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self._last = 0.0
        self._t0 = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self._last >= REDRAW:
            self._last = now
            self._draw()
        elif not self.tty and now - self._last >= PLAIN_EVERY and now - self._t0 >= PLAIN_EVERY:
            self._last = now
            self.stream.write(f"{self.label}: {self.done}/{self.total} {self.unit}\n")
            self.stream.flush()

    def _draw(self) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(frac * WIDTH)
        self.stream.write(f"\r{self.label} [{bar:<{WIDTH}}] {self.done}/{self.total} "
                          f"{self.unit} {frac:4.0%}\x1b[K")
        self.stream.flush()

    def finish(self, summary: str = "") -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
        if summary:
            self.stream.write(f"{self.label}: {summary}\n")
        self.stream.flush()

"""exmailctl's progress display of a CSV import, on standard error only.

On a terminal: a bar redrawn in place ten times a second, left at 100% with a
new line when the import is done (or with a new line where it stopped, so
the error that follows starts on its own line). Elsewhere (a pipe, a log
file): a plain line every `EXMAILCTL_PROGRESS_INTERVAL` seconds (default 5),
so a short import prints nothing. Standard output never changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from twisted.internet import task

from exmaild.directory.progress import APPLYING, Progress

T = TypeVar("T")
_BAR = 30
_TTY_INTERVAL = 0.1


def _interval() -> float:
    try:
        return max(0.01, float(os.environ.get("EXMAILCTL_PROGRESS_INTERVAL", "5")))
    except ValueError:
        return 5.0


class ProgressDisplay:
    def __init__(self, progress: Progress, stream: TextIO, reactor: Any,
                 *, tty: bool | None = None) -> None:
        self.p, self.stream = progress, stream
        self.tty = stream.isatty() if tty is None else tty
        self.drawn = False
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(_TTY_INTERVAL if self.tty else _interval(), now=False)

    def _text(self) -> str:
        what = "applying" if self.p.phase == APPLYING else "checking"
        return f"{what} {self.p.done}/{self.p.total} rows"

    def _tick(self) -> None:
        if self.p.total <= 0 or self.p.phase not in ("checking", "applying"):
            return
        pct = int(self.p.fraction * 100)
        if self.tty:
            self._bar(pct, self._text())
        else:
            self.stream.write(f"exmailctl: import {pct}%: {self._text()}\n")
            self.stream.flush()

    def _bar(self, pct: int, text: str) -> None:
        full = _BAR * pct // 100
        self.stream.write(f"\r[{'#' * full}{'.' * (_BAR - full)}] {pct:3d}% {text}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def finish(self, ok: bool) -> None:
        if self.loop.running:
            self.loop.stop()
        if self.tty and ok and self.p.total > 0:
            self._bar(100, f"{self.p.total}/{self.p.total} rows")
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


async def with_progress(reactor: Any, run: Callable[[Progress], Awaitable[T]],
                        stream: TextIO | None = None) -> T:
    """`run(progress)` with its progress shown on standard error."""
    progress = Progress(reactor)
    display = ProgressDisplay(progress, stream or sys.stderr, reactor)
    display.start()
    try:
        result = await run(progress)
    except BaseException:
        display.finish(False)
        raise
    display.finish(True)
    return result

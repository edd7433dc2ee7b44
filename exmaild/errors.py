"""Problems with the machine rather than the code, said in one line.

A missing driver, an unreachable database, a busy port or an unreadable
certificate is the administrator's to fix: the daemon and exmailctl both
print `PROG: message` on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import sys


class StartupError(Exception):
    """An environment problem found before anything was created or bound."""


def report(prog: str, error: BaseException) -> int:
    """Write `error` as `prog: text` lines on stderr; the exit status to use."""
    for line in str(error).splitlines() or [type(error).__name__]:
        sys.stderr.write(f"{prog}: {line}\n")
    sys.stderr.flush()
    return 1

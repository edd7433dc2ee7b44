"""What kind of storage trouble an exception is, for the protocols' replies.

A full disk (or quota, or file size limit) is worth saying so: SMTP answers
`452 4.3.1 Insufficient system storage` as Postfix does, IMAP `NO
[UNAVAILABLE]`; anything else is a plain temporary local error.
"""

from __future__ import annotations

import errno

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_SQLITE_FULL = 13
# PostgreSQL: disk_full, out_of_memory's class sibling insufficient_resources.
_PG_FULL = {"53100", "53000"}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 16:
        seen.append(cur)
        orig = getattr(cur, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
        if isinstance(orig, BaseException) and orig not in seen:
            seen.append(orig)
        cur = cur.__cause__ or cur.__context__
    return seen


def storage_full(exc: BaseException) -> bool:
    """True if `exc` (or what it wraps) says the disk had no room."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return True
        if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(e, "sqlstate", None) in _PG_FULL:
            return True
    return False

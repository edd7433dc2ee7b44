"""More IMAP details from issue 12, over real sockets: SENT* dates in the
Date: header's own zone, a re-created mailbox's counts."""

from __future__ import annotations

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
    imap_server_fixture,
)


def _dated(subject: str, date: str | None) -> bytes:
    head = f"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    return (head + "\r\nHi.\r\n").encode()


def _search(r: Raw, tag: str, criteria: str) -> list[int]:
    out = r.cmd(tag, "UID SEARCH " + criteria)
    assert out[-1].startswith(tag.encode() + b" OK"), out
    line = next(x for x in out if x.startswith(b"* SEARCH"))
    return [int(x) for x in line.split()[2:]]


# -- SENTON / SENTBEFORE / SENTSINCE (RFC 3501 §6.4.4) ---------------------------------------
@pytest_twisted.ensureDeferred
async def test_sent_dates_compare_the_day_as_written(imap_server: Server) -> None:
    acct = await imap_server.account()
    dates = [
        "Sun, 25 Mar 2007 00:00:00 +0200",  # 24 Mar 22:00 UTC
        "Sat, 02 Mar 2024 00:30:00 +1400",  # 1 Mar UTC
        "Fri, 01 Mar 2024 23:00:00 -1200",  # 2 Mar UTC
        "Fri, 01 Mar 2024 23:30:00",  # no zone: as UTC
    ]
    u = [await imap_server.deliver(acct.id, _dated(f"m{i}", d)) for i, d in enumerate(dates)]
    # No Date: the internal date's (UTC) day.
    u.append(await imap_server.deliver(acct.id, _dated("nodate", None), internal_date=1709251200))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        assert _search(r, "a", "SENTON 25-Mar-2007") == [u[0]]
        assert _search(r, "b", "SENTON 24-Mar-2007") == []
        assert _search(r, "c", "SENTBEFORE 25-Mar-2007") == []
        assert _search(r, "d", "SENTON 2-Mar-2024") == [u[1]]
        assert _search(r, "e", "SENTON 1-Mar-2024") == [u[2], u[3], u[4]]
        assert _search(r, "f", "SENTSINCE 2-Mar-2024") == [u[1]]
        assert _search(r, "g", "SENTBEFORE 2-Mar-2024") == [u[0], u[2], u[3], u[4]]
        assert _search(r, "h", "NOT SENTON 1-Mar-2024") == [u[0], u[1]]
        out = r.cmd("i", "SEARCH SENTON 25-Mar-2007")
        assert out[0] == b"* SEARCH 1", out
        r.close()

    await blocking(run)

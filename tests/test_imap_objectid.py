"""WITHIN (RFC 5032), SAVEDATE (RFC 8514), OBJECTID (RFC 8474), STATUS=SIZE
(RFC 8438) and CREATE-SPECIAL-USE (RFC 6154) over real sockets, on SQLite
and PostgreSQL."""

from __future__ import annotations

import calendar
import re
import time

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
    client,
    imap_server_fixture,
    mail,
)


def _uids(out: list[bytes]) -> list[int]:
    line = next(x for x in out if x.startswith(b"* SEARCH"))
    return [int(x) for x in line.split()[2:]]


@pytest_twisted.ensureDeferred
async def test_within_savedate_objectid_status_size(imap_server: Server) -> None:
    acct = await imap_server.account()
    now = int(time.time())
    old = await imap_server.deliver(acct.id, mail("old", msgid="<root@t>"),
                                    internal_date=now - 7200)
    reply = mail("Re: old", msgid="<r1@t>", extra="References: <root@t>\r\n")
    new = await imap_server.deliver(acct.id, reply, internal_date=now - 600)
    other = await imap_server.deliver(acct.id, mail("other", body="x" * 500),
                                      internal_date=now - 30)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        caps = r.cmd("c", "CAPABILITY")[0].split()
        for cap in (b"WITHIN", b"SAVEDATE", b"OBJECTID", b"STATUS=SIZE",
                    b"CREATE-SPECIAL-USE"):
            assert cap in caps, caps
        # STATUS SIZE / MAILBOXID, before the mailbox is selected (from the
        # database) and after (from the shared index): the same answers.
        fetched = []
        first = r.cmd("s0", "STATUS INBOX (MESSAGES SIZE MAILBOXID)")
        out = r.cmd("s", "SELECT INBOX")
        boxid = next(re.search(rb"\[MAILBOXID \(([A-Za-z0-9_-]+)\)\]", x) for x in out
                     if b"MAILBOXID" in x).group(1)
        for line in r.cmd("f0", "FETCH 1:* (RFC822.SIZE)"):
            if b"RFC822.SIZE" in line:
                fetched.append(int(line.rsplit(b" ", 1)[1].rstrip(b")")))
        expected = b'* STATUS "INBOX" (MESSAGES 3 SIZE %d MAILBOXID (%s))' % (
            sum(fetched), boxid)
        assert first[0] == expected, (first, expected)
        assert r.cmd("s1", "STATUS INBOX (MESSAGES SIZE MAILBOXID)")[0] == expected
        # WITHIN: relative to now, in seconds.
        assert _uids(r.cmd("w1", "UID SEARCH YOUNGER 3600")) == [new, other]
        assert _uids(r.cmd("w2", "UID SEARCH OLDER 3600")) == [old]
        assert _uids(r.cmd("w3", "UID SEARCH OLDER 300 YOUNGER 3000")) == [new]
        assert r.cmd("w4", "SEARCH YOUNGER 0")[-1].startswith(b"w4 BAD")
        assert r.cmd("w5", "SEARCH OLDER")[-1].startswith(b"w5 BAD")
        # SAVEDATE: when the message entered the mailbox (today), not its date.
        # (Days either side of today: no flake at midnight.)
        day = 86400
        yesterday = time.strftime("%d-%b-%Y", time.gmtime(time.time() - day))
        tomorrow = time.strftime("%d-%b-%Y", time.gmtime(time.time() + day))
        assert _uids(r.cmd("d1", f"UID SEARCH SAVEDSINCE {yesterday}")) == [old, new, other]
        assert _uids(r.cmd("d2", f"UID SEARCH SAVEDBEFORE {yesterday}")) == []
        assert _uids(r.cmd("d3", f"UID SEARCH SAVEDON {tomorrow} SAVEDATESUPPORTED")) == []
        assert _uids(r.cmd("d5", "UID SEARCH SENTBEFORE 1-Jan-2030 SAVEDATESUPPORTED")) == [
            old, new, other]
        out = r.cmd("d4", "UID FETCH 1:* (SAVEDATE EMAILID THREADID)")
        assert out[-1].startswith(b"d4 OK"), out
        found = {}
        for line in out[:-1]:
            m = re.fullmatch(
                rb'\* \d+ FETCH \(UID (\d+) SAVEDATE "([^"]+)" EMAILID \(([A-Za-z0-9_-]+)\) '
                rb"THREADID \(([A-Za-z0-9_-]+)\)\)", line)
            assert m, line
            found[int(m.group(1))] = m.groups()[1:]
        assert set(found) == {old, new, other}
        saved = {calendar.timegm(time.strptime(v[0][:20].decode().strip(), "%d-%b-%Y %H:%M:%S"))
                 for v in found.values()}
        assert all(abs(t - time.time()) < 3 * day for t in saved), found
        emails = {v[1] for v in found.values()}
        assert len(emails) == 3
        # The reply is in its parent's thread; the other message is not.
        assert found[old][2] == found[new][2] != found[other][2]
        # COPY keeps the EMAILID; the copy gets the other mailbox's id.
        assert r.cmd("cr", "CREATE Keep")[-1].startswith(b"cr OK [MAILBOXID (")
        assert r.cmd("cp", f"UID COPY {old} Keep")[-1].startswith(b"cp OK")
        r.cmd("sk", "SELECT Keep")
        out = r.cmd("k", "FETCH 1 (EMAILID)")
        assert out[0] == b"* 1 FETCH (EMAILID (%s))" % found[old][1], out
        keep = r.cmd("ks", "STATUS Keep (MAILBOXID)")[0]
        assert keep.startswith(b'* STATUS "Keep" (MAILBOXID (F') and boxid not in keep
        # Kept across RENAME; a new mailbox of the old name gets a new id.
        keep_id = keep.split(b"(")[-1].rstrip(b")")
        r.cmd("u", "UNSELECT")
        assert r.cmd("rn", "RENAME Keep Kept")[-1].startswith(b"rn OK")
        assert keep_id in r.cmd("ks2", "STATUS Kept (MAILBOXID)")[0]
        out = r.cmd("cr2", "CREATE Keep")
        assert out[-1].startswith(b"cr2 OK [MAILBOXID (") and keep_id not in out[-1], out
        # DELETE and CREATE again: a new id, never an old one.
        second = out[-1].split(b"(")[1].split(b")")[0]
        r.cmd("dl", "DELETE Keep")
        third = r.cmd("cr3", "CREATE Keep")[-1].split(b"(")[1].split(b")")[0]
        assert len({boxid, keep_id, second, third}) == 4, (boxid, keep_id, second, third)
        # LIST-STATUS takes the new items too.
        out = r.cmd("ls", 'LIST "" "INBOX" RETURN (STATUS (SIZE MAILBOXID))')
        assert out[1] == expected.replace(b"MESSAGES 3 ", b""), out
        # CREATE-SPECIAL-USE: \Archive once; the system uses are taken;
        # virtual ones and unknown ones are refused with USEATTR.
        assert r.cmd("a1", "CREATE Archive (USE (\\Archive))")[-1].startswith(b"a1 OK")
        out = r.cmd("l", 'LIST (SPECIAL-USE) "" "*"')
        assert b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"' in out, out
        for tag, use in (("a2", "\\Archive"), ("a3", "\\Sent"), ("a4", "\\All"),
                         ("a5", "\\Nonsense"), ("a6", "\\Drafts \\Archive")):
            out = r.cmd(tag, f"CREATE X{tag} (USE ({use}))")
            assert out[-1].startswith(tag.encode() + b" NO [USEATTR]"), out
        assert b"Xa2" not in b"".join(r.cmd("l2", 'LIST "" "*"'))
        assert r.cmd("a7", "CREATE Y (USE ())")[-1].startswith(b"a7 BAD")
        assert r.cmd("a8", "CREATE Y (FOO (\\Archive))")[-1].startswith(b"a8 BAD")
        r.close()

        c = client(imap_server)
        got = c.folder_status("INBOX", ["SIZE", "MAILBOXID"])
        assert got[b"SIZE"] == sum(fetched) and got[b"MAILBOXID"] == (boxid,), got
        c.select_folder("INBOX")
        data = c.fetch([new], ["EMAILID", "SAVEDATE"])
        assert data[new][b"EMAILID"] == (found[new][1],), data
        assert c.search(["YOUNGER", 3600]) == [new, other]
        c.logout()

    await blocking(run)

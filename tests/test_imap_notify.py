"""NOTIFY (RFC 5465) over real sockets: a session that set NOTIFY hears,
without sending a command, of new, expunged and re-flagged messages in its
selected mailbox (with MessageNew's fetch attributes), of changes to other
mailboxes as STATUS, and of other sessions' CREATE / RENAME / DELETE /
SUBSCRIBE as LIST; NOTIFY NONE stops it; BADEVENT and BAD for what the RFC
refuses."""

from __future__ import annotations

import re

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture, mail  # noqa: F401


def _until(r: Raw, pattern: bytes) -> list[bytes]:
    """Unsolicited lines up to the first matching ``pattern`` (a regex)."""
    seen = []
    while True:
        line = r.line()
        seen.append(line)
        if re.search(pattern, line):
            return seen


def _append(r: Raw, tag: str, box: str, msg: bytes) -> None:
    r.send(f"{tag} APPEND {box} ".encode() + b"{%d+}\r\n%b\r\n" % (len(msg), msg))
    assert r.response(tag)[-1].startswith(tag.encode() + b" OK"), tag


@pytest_twisted.ensureDeferred
async def test_notify(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("first"))

    def run() -> None:
        a = Raw(imap_server.port, timeout=20)
        a.login()
        assert b" NOTIFY" in a.cmd("c", "CAPABILITY")[0]
        out = a.cmd("b1", "NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))")
        assert out[-1].startswith(b"b1 NO [BADEVENT ("), out
        assert a.cmd("b2", "NOTIFY SET (personal (MessageNew))")[-1].startswith(b"b2 BAD")
        assert a.cmd("b3", "NOTIFY SET (personal (FlagChange))")[-1].startswith(b"b3 BAD")
        out = a.cmd("b4", "NOTIFY SET (inboxes (MessageNew (UID) MessageExpunge))")
        assert out[-1].startswith(b"b4 BAD"), out  # fetch attributes: selected only

        out = a.cmd("n", "NOTIFY SET STATUS (selected (MessageNew (UID FLAGS) MessageExpunge "
                         "FlagChange)) (personal (MessageNew MessageExpunge FlagChange "
                         "MailboxName SubscriptionChange))")
        assert out[-1] == b"n OK NOTIFY completed", out
        assert b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)' in out, out
        assert b'* STATUS "Sent" (MESSAGES 0 UIDNEXT 1 UNSEEN 0)' in out, out
        a.cmd("s", "SELECT INBOX")

        b = Raw(imap_server.port)
        b.login()
        # A new message in the selected mailbox: EXISTS and its FETCH, unasked.
        _append(b, "a1", "INBOX", mail("second"))
        got = _until(a, rb"^\* 2 FETCH")
        assert b"* 2 EXISTS" in got, got
        assert got[-1] == b"* 2 FETCH (UID 2 FLAGS (\\Recent))", got
        # Flags changed by another session.
        b.cmd("s", "SELECT INBOX")
        b.cmd("f", "STORE 1 +FLAGS (\\Flagged)")
        got = _until(a, rb"^\* 1 FETCH")
        assert got[-1].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged"), got
        # Expunged by another session: EXPUNGE at once (selected, not -delayed).
        b.cmd("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("x", "EXPUNGE")
        assert _until(a, rb"EXPUNGE")[-1] == b"* 1 EXPUNGE"
        # Another mailbox: STATUS.
        _append(b, "a2", "Sent", mail("sent"))
        got = _until(a, rb'^\* STATUS "Sent"')
        assert got[-1] == b'* STATUS "Sent" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)', got
        # Mailbox names and subscriptions.
        b.cmd("c", "CREATE Projects")
        assert _until(a, rb"Projects")[-1] == b'* LIST () "/" "Projects"'
        b.cmd("u", "SUBSCRIBE Projects")
        assert _until(a, rb"Projects")[-1] == b'* LIST (\\Subscribed) "/" "Projects"'
        b.cmd("r", "RENAME Projects Work")
        assert _until(a, rb"Work")[-1] == b'* LIST () "/" "Work" ("OLDNAME" ("Projects"))'
        _append(b, "a3", "Work", mail("work"))  # watched under its new name
        got = _until(a, rb'^\* STATUS "Work"')
        assert got[-1] == b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)', got
        b.cmd("dl", "DELETE Work")
        assert _until(a, rb"Work")[-1] == b'* LIST (\\NonExistent) "/" "Work"'
        # The session's own commands still work in between.
        assert a.cmd("z", "NOOP")[-1] == b"z OK NOOP completed"

        # NOTIFY NONE: quiet again (until a command's own sync).
        assert a.cmd("o", "NOTIFY NONE")[-1] == b"o OK NOTIFY completed"
        _append(b, "a4", "Sent", mail("sent2"))
        b.cmd("c2", "CREATE Later")
        _append(b, "a5", "INBOX", mail("third"))
        out = a.cmd("z2", "NOOP")
        assert not any(b"STATUS" in x or b"LIST" in x for x in out), out
        assert b"* 2 EXISTS" in out, out  # the usual sync at a command's end

        # selected-delayed: expunges wait for a command that may report them.
        assert a.cmd("o2", "NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")[
            -1] == b"o2 OK NOTIFY completed"
        b.cmd("s2", "SELECT INBOX")
        b.cmd("d2", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("x2", "EXPUNGE")
        _append(b, "a6", "INBOX", mail("fourth"))
        got = _until(a, rb"EXISTS|EXPUNGE")
        assert got[-1] == b"* 3 EXISTS", got  # the expunged one still counts
        out = a.cmd("z3", "NOOP")  # (the RECENT after that EXISTS comes first)
        assert [x for x in out if b"EXPUNGE" in x] == [b"* 1 EXPUNGE"], out
        b.close()
        a.close()

    await blocking(run)

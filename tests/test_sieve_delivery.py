"""Sieve in the SMTP delivery path: real SMTP (smtplib) into the in-process
MX on the real store (SQLite and PostgreSQL), then the stored result."""

from __future__ import annotations

import smtplib
import time
from typing import Any

import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from exmaild.sieve.delivery import scripts_of
from exmaild.store import imapfolders
from exmaild.store import model as m

from .smtputil import SmtpLab, blocking, lab_fixture, mail

lab = lab_fixture()

REQ = 'require ["fileinto", "imap4flags", "reject", "vacation", "copy", "variables"];\n'


async def use_script(lab: SmtpLab, account_id: int, text: str, name: str = "main") -> None:
    scripts = scripts_of(lab.app)
    await scripts.put(account_id, name, REQ + text)
    await scripts.activate(account_id, name)


def send(lab: SmtpLab, msg: bytes, to: list[str], sender: str = "carol@remote.test") -> Any:
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=30) as c:
        try:
            return c.sendmail(sender, to, msg)
        except smtplib.SMTPDataError as e:
            return e


def placed(lab: SmtpLab, address: str) -> list[tuple[str, str, int, str]]:
    """(mailbox, subject, flag mask, keywords) of the account's messages."""
    with lab.store.engine.connect() as c:
        rows = c.execute(
            sa.select(m.mailboxes.c.name, m.contents.c.subject, m.messages.c.flags,
                      m.messages.c.keywords)
            .select_from(m.messages.join(m.mailboxes).join(m.accounts).join(m.contents))
            .where(m.accounts.c.address == address)
            .order_by(m.mailboxes.c.name, m.messages.c.uid)).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def imap_view(port: int) -> dict[str, list[tuple[str, str]]]:
    """(subject, flags) per message of INBOX and Work, read with imaplib."""
    import imaplib
    import re

    from .smtputil import PASSWORD

    out: dict[str, list[tuple[str, str]]] = {}
    with imaplib.IMAP4("127.0.0.1", port, timeout=20) as c:
        c.login("bob@example.test", PASSWORD)
        for box in ("INBOX", "Work"):
            c.select(box, readonly=True)
            typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            rows = []
            for item in data:
                if isinstance(item, tuple):
                    flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                    subject = item[1].decode().split(":", 1)[1].strip()
                    names = flags.group(1).decode().split() if flags else []
                    rows.append((subject, " ".join(f for f in names if f != "\\Recent")))
            out[box] = rows
    return out


async def wait_for(cond: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = await blocking(cond)
        if got:
            return got
        await defer.Deferred.fromCoroutine(_sleep(0.05))
    raise AssertionError("condition not met in time")


async def _sleep(s: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(s, d.callback, None)
    await d


@pytest_twisted.ensureDeferred
async def test_placement_flags_discard_and_fallbacks(lab: SmtpLab) -> None:
    await lab.store.pool.transaction(lambda c: imapfolders.create(c, lab.bob, "Work"))
    await use_script(lab, lab.bob, '''
if header :contains "subject" "work" { fileinto :flags ["\\\\Flagged", "$Work"] "Work"; }
elsif header :contains "subject" "drop" { discard; }
elsif header :contains "subject" "gone" { fileinto "Vanished"; }
elsif header :contains "subject" "copy" { fileinto :copy "Work"; addflag "\\\\Seen"; }
elsif header :contains "subject" "boom" { redirect "a@x.test"; redirect "b@x.test";
    redirect "c@x.test"; redirect "d@x.test"; redirect "e@x.test"; fileinto "Work"; }
''')
    logs: list[str] = []

    def observe(e: dict) -> None:
        if e.get("log_namespace") == "exmaild.sieve":
            from twisted.logger import formatEvent

            logs.append(formatEvent(e))

    globalLogPublisher.addObserver(observe)
    try:
        for subject in ("work 1", "drop 2", "gone 3", "copy 4", "boom 5", "plain 6"):
            msg = mail(1).replace(b"Subject: message 1", f"Subject: {subject}".encode())
            assert await blocking(send, lab, msg, ["bob@example.test"]) == {}
    finally:
        globalLogPublisher.removeObserver(observe)
    got = await blocking(placed, lab, "bob@example.test")
    assert got == [
        ("INBOX", "gone 3", 0, ""),   # missing folder: INBOX, and a log line
        ("INBOX", "copy 4", 1, ""),   # implicit keep with the flag set after :copy
        ("INBOX", "boom 5", 0, ""),   # too many redirects: the error keeps it
        ("INBOX", "plain 6", 0, ""),
        ("Work", "work 1", 4, "$Work"),
        ("Work", "copy 4", 0, ""),
    ]
    assert any("'Vanished'" in line and "no such folder" in line for line in logs), logs
    # What a mail client sees, over IMAP.
    from .imaputil import start_server, stop_server

    srv = await start_server(lab.app.cfg, lab.store)
    try:
        seen = await blocking(imap_view, srv.port)
    finally:
        await stop_server(srv)
    assert seen["INBOX"] == [("gone 3", ""), ("copy 4", "\\Seen"), ("boom 5", ""),
                             ("plain 6", "")]
    assert seen["Work"] == [("work 1", "\\Flagged $Work"), ("copy 4", "")]
    assert any("more than 4 redirects" in line for line in logs), logs
    assert not lab.queue_rows()  # the failed script's redirects went nowhere


@pytest_twisted.ensureDeferred
async def test_redirect_and_reject(lab: SmtpLab) -> None:
    await use_script(lab, lab.bob, '''
if header :is "subject" "fwd" { redirect "far@remote.test"; redirect :copy "alice@example.test"; }
if header :is "subject" "no" { reject "I do not want this"; }
''')
    msg = mail(1).replace(b"Subject: message 1", b"Subject: fwd")
    assert await blocking(send, lab, msg, ["bob@example.test"]) == {}
    assert [p[:2] for p in await blocking(placed, lab, "bob@example.test")] == []
    assert [p[:2] for p in await blocking(placed, lab, "alice@example.test")] == [
        ("INBOX", "fwd")]
    rows = lab.queue_rows()
    assert [(r.recipient, r.status) for r in rows] == [("far@remote.test", "queued")]
    # The envelope sender is rewritten (SRS) to bob's domain, so SPF at the
    # receiver checks us; a bounce to it is relayed back to carol.
    srs = rows[0].sender
    assert srs.startswith("SRS0=") and srs.endswith("=remote.test=carol@example.test"), srs

    def bounce(to: str) -> Any:
        with smtplib.SMTP("127.0.0.1", lab.mx, timeout=30) as c:
            c.ehlo("bounce.remote.test")
            c.mail("<>")
            return c.rcpt(to)

    assert (await blocking(bounce, srs))[0] == 250
    forged = srs.replace("=remote.test=carol", "=remote.test=mallory")
    code, text = await blocking(bounce, forged)
    assert code == 550 and b"5.1.1" in text
    # A bounce whose address changed case on the way is relayed too.
    assert await blocking(send, lab, mail(9), [srs.upper()], "") == {}
    assert ("carol@remote.test", "") in [(r.recipient.lower(), r.sender)
                                         for r in lab.queue_rows()]
    before = len(lab.queue_rows())
    # An enterprise that forbids forwarding outside its domains: kept instead.
    with lab.store.engine.begin() as c:
        eid = c.execute(sa.select(m.domains.c.enterprise_id)
                        .where(m.domains.c.name == "example.test")).scalar_one()
        c.execute(m.enterprises.update().where(m.enterprises.c.id == eid)
                  .values(settings={"forward_outside": False}))
    queued = len(lab.queue_rows())
    msg = mail(5).replace(b"Subject: message 5", b"Subject: fwd")
    assert await blocking(send, lab, msg, ["bob@example.test"]) == {}
    assert len(lab.queue_rows()) == queued
    assert ("INBOX", "fwd") in [p[:2] for p in await blocking(placed, lab, "bob@example.test")]
    # Reject with bob the only recipient: 550 at the end of DATA.
    msg = mail(2).replace(b"Subject: message 2", b"Subject: no")
    err = await blocking(send, lab, msg, ["bob@example.test"])
    assert isinstance(err, smtplib.SMTPDataError)
    assert err.smtp_code == 550 and b"5.7.1 I do not want this" in err.smtp_error
    # With another recipient who takes it, bob's reject becomes a report to
    # the sender (remote: queued with the null sender).
    msg = mail(3).replace(b"Subject: message 3", b"Subject: no")
    assert await blocking(send, lab, msg, ["bob@example.test", "alice@example.test"]) == {}

    def report() -> Any:
        return [r for r in lab.queue_rows()[before:] if r.sender == "" and
                r.recipient == "carol@remote.test"]

    assert await wait_for(report)
    assert ("INBOX", "no") in [p[:2] for p in await blocking(placed, lab, "alice@example.test")]
    assert "no" not in [p[1] for p in await blocking(placed, lab, "bob@example.test")]


@pytest_twisted.ensureDeferred
async def test_redirect_loops_stop_and_broken_scripts_keep(lab: SmtpLab) -> None:
    # Two members redirecting to each other: a local redirect places the copy
    # without running the target's script again, so each gets one copy.
    await use_script(lab, lab.bob, 'redirect "alice@example.test";')
    await use_script(lab, lab.alice, 'redirect "bob@example.test";')
    assert await blocking(send, lab, mail(1), ["bob@example.test"]) == {}
    assert await blocking(send, lab, mail(2), ["bob@example.test", "alice@example.test"]) == {}
    assert [p[:2] for p in await blocking(placed, lab, "alice@example.test")] == [
        ("INBOX", "message 1"), ("INBOX", "message 2")]
    assert [p[:2] for p in await blocking(placed, lab, "bob@example.test")] == [
        ("INBOX", "message 2")]
    # A message that has already travelled 25 hops is not sent out again.
    await use_script(lab, lab.bob, 'redirect "far@remote.test";')
    hops = "".join(f"Received: from hop{i}.remote.test by x; Fri, 27 Nov 2026 10:00:00 +0800"
                   "\r\n" for i in range(25))
    assert await blocking(send, lab, hops.encode() + mail(3), ["bob@example.test"]) == {}
    assert ("INBOX", "message 3") in [p[:2] for p in await blocking(placed, lab,
                                                                      "bob@example.test")]
    assert not lab.queue_rows()
    # A stored script that no longer parses (written behind our back) keeps mail.
    with lab.store.engine.begin() as c:
        c.execute(m.sieve_scripts.update().where(m.sieve_scripts.c.account_id == lab.bob)
                  .values(active=False))
        c.execute(m.sieve_scripts.insert().values(account_id=lab.bob, name="bad",
                                                  script="if true { discard;", active=True,
                                                  updated=0))
    scripts_of(lab.app).invalidate()  # as [smtp] lookup_cache_ttl later would
    assert await blocking(send, lab, mail(4), ["bob@example.test"]) == {}
    assert ("INBOX", "message 4") in [p[:2] for p in await blocking(placed, lab,
                                                                      "bob@example.test")]


@pytest_twisted.ensureDeferred
async def test_vacation_once_per_sender_and_never_to_lists(lab: SmtpLab) -> None:
    await use_script(lab, lab.bob, 'vacation :days 1 :subject "Away" "Back on Monday.";')
    decided: list[str] = []

    def observe(e: dict) -> None:
        if e.get("log_namespace") == "exmaild.sieve" and "why" in e:
            decided.append(e["why"])
        elif e.get("log_namespace") == "exmaild.sieve" and "already sent" in e["log_format"]:
            decided.append("already sent this period")

    globalLogPublisher.addObserver(observe)
    try:
        await _vacation_checks(lab, decided)
    finally:
        globalLogPublisher.removeObserver(observe)


async def _vacation_checks(lab: SmtpLab, decided: list[str]) -> None:

    def replies() -> list[Any]:
        return [r for r in lab.queue_rows() if r.sender == ""]

    assert await blocking(send, lab, mail(1), ["bob@example.test"]) == {}
    got = await wait_for(replies)
    assert [r.recipient for r in got] == ["carol@remote.test"]
    with lab.store.engine.connect() as c:
        cid = c.execute(sa.select(m.queue_messages.c.content_id)).scalar_one()
        row = c.execute(sa.select(m.contents).where(m.contents.c.id == cid)).one()
    from exmaild.store.blobs import BlobRef

    reply = lab.store.segments.read(BlobRef(row.segment, row.offset, row.size))
    assert b"Auto-Submitted: auto-replied\r\n" in reply
    assert b"In-Reply-To: <m1@remote.test>\r\n" in reply
    assert b"Subject: Away\r\n" in reply and b"Back on Monday." in reply
    assert b"To: carol@remote.test\r\n" in reply
    # Same sender again, then list/bulk/auto mail from others: no reply at all.
    assert await blocking(send, lab, mail(2), ["bob@example.test"]) == {}
    for n, extra, sender in (
            (3, "List-Id: <team.lists.remote.test>\r\n", "dave@remote.test"),
            (4, "Precedence: bulk\r\n", "erin@remote.test"),
            (5, "Auto-Submitted: auto-generated\r\n", "frank@remote.test"),
            (6, "", "")):
        assert await blocking(send, lab, mail(n, extra=extra), ["bob@example.test"],
                              sender) == {}
    assert await blocking(send, lab, mail(7), ["bob@example.test"], "gina@remote.test") == {}
    got = await wait_for(lambda: len(replies()) >= 2 and replies())
    # Every message without a reply was decided, each with its reason logged.
    await wait_for(lambda: len(decided) >= 5)
    assert sorted(decided) == sorted([
        "already sent this period", "mailing list", "Precedence: bulk", "Auto-Submitted",
        "null sender"])
    assert [r.recipient for r in got] == ["carol@remote.test", "gina@remote.test"]
    assert len(await blocking(placed, lab, "bob@example.test")) == 7  # all kept


@pytest_twisted.ensureDeferred
async def test_sender_lists(lab: SmtpLab) -> None:
    from exmaild.sieve import senders

    def add(lst: str, pattern: str, action: str = "junk") -> Any:
        return lab.store.pool.transaction(
            lambda c: senders.add(c, lab.bob, lst, pattern, action))

    await add("block", "spam.test")
    await add("block", "@Evil.Test.", "refuse")
    await add("allow", "friend@spam.test")
    await lab.store.pool.transaction(lambda c: imapfolders.create(c, lab.bob, "Friends"))
    await use_script(lab, lab.bob, 'if address :is "from" "friend@spam.test" '
                                   '{ fileinto "Friends"; }')
    assert await blocking(send, lab, mail(1), ["bob@example.test"], "x@mx.spam.test") == {}
    assert await blocking(send, lab, mail(2, sender="friend@spam.test"), ["bob@example.test"],
                          "friend@spam.test") == {}
    err = await blocking(send, lab, mail(3), ["bob@example.test"], "mallory@evil.test")
    assert isinstance(err, smtplib.SMTPDataError) and err.smtp_code == 550
    assert b"5.7.1" in err.smtp_error
    # Refused for bob, taken by alice: bob's copy goes to Junk instead.
    assert await blocking(send, lab, mail(4), ["bob@example.test", "alice@example.test"],
                          "mallory@evil.test") == {}
    assert [p[:2] for p in await blocking(placed, lab, "bob@example.test")] == [
        ("Friends", "message 2"), ("Junk", "message 1"), ("Junk", "message 4")]
    assert [p[:2] for p in await blocking(placed, lab, "alice@example.test")] == [
        ("INBOX", "message 4")]


@pytest_twisted.ensureDeferred
async def test_structured_rules(lab: SmtpLab) -> None:
    from exmaild.sieve import rules as R

    await lab.store.pool.transaction(lambda c: imapfolders.create(c, lab.bob, "Invoices"))
    rules = [
        {"name": "invoices", "match": "all", "stop": True,
         "conditions": [{"field": "subject", "op": "contains", "value": "invoice"},
                        {"field": "body", "op": "contains", "value": "amount due"}],
         "actions": [{"type": "move", "value": "Invoices"}, {"type": "mark_read"}]},
        {"name": "cc-me", "match": "any",
         "conditions": [{"field": "only_to_me"}],
         "actions": [{"type": "tag", "value": "$Direct"},
                     {"type": "forward", "value": ["far@remote.test"], "keep": True}]},
        {"name": "big", "enabled": False,
         "conditions": [{"field": "size", "op": "over", "value": 10}],
         "actions": [{"type": "delete"}]},
    ]
    await R.save(scripts_of(lab.app), lab.bob, "bob@example.test", [R.Rule(r) for r in rules])
    inv = mail(1, body="The amount due is 5.\r\n", to="bob@example.test").replace(
        b"Subject: message 1", b"Subject: Invoice 7")
    assert await blocking(send, lab, inv, ["bob@example.test"]) == {}
    assert await blocking(send, lab, mail(2, to="bob@example.test"), ["bob@example.test"]) == {}
    assert await blocking(send, lab, mail(3, to="x@example.test", extra="Cc: y@z.test\r\n"),
                          ["bob@example.test"]) == {}
    assert await blocking(placed, lab, "bob@example.test") == [
        ("INBOX", "message 2", 0, "$Direct"), ("INBOX", "message 3", 0, ""),
        ("Invoices", "Invoice 7", 1, "")]
    assert [r.recipient for r in lab.queue_rows()] == ["far@remote.test"]

"""Issue 13, the rest of the rules: attachment-name and date conditions, the
enterprise time zone, vacation to known senders only, the per-member
forwarding policy and the Delivered-To loop stop. Real SMTP into the
in-process MX on the real store (SQLite and PostgreSQL), IMAP to look."""

from __future__ import annotations

import argparse
import base64
import smtplib
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_twisted
import sqlalchemy as sa
from twisted.logger import formatEvent, globalLogPublisher

from exmaild.sieve import rules as R
from exmaild.sieve.delivery import scripts_of
from exmaild.sieve.interp import evaluate
from exmaild.sieve.message import MessageContext
from exmaild.sieve.parser import parse
from exmaild.store import imapfolders
from exmaild.store import model as m

from .smtputil import PASSWORD, SmtpLab, blocking, lab_fixture, mail
from .test_sieve_delivery import placed, send, wait_for
from .test_smtp_submission import insecure

lab = lab_fixture()
ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")  # [exmail_api] timezone's default


def with_attachment(n: int, disposition: str, ctype: str = "application/pdf") -> bytes:
    return (
        f"From: <carol@remote.test>\r\nTo: <bob@example.test>\r\nSubject: message {n}\r\n"
        f"Message-ID: <a{n}@remote.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
        f"--b1\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
        f"{base64.b64encode(b'%PDF-1.4 test').decode()}\r\n--b1--\r\n").encode()


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, e: dict) -> None:
        if e.get("log_namespace") == "exmaild.sieve":
            self.lines.append(formatEvent(e))

    def __enter__(self) -> Logs:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


def imap_folder(port: int, user: str, box: str) -> list[tuple[str, str]]:
    """(subject, flags) of a folder, read over IMAP."""
    import imaplib
    import re

    out = []
    with imaplib.IMAP4("127.0.0.1", port, timeout=20) as c:
        c.login(user, PASSWORD)
        typ, _ = c.select(box, readonly=True)
        assert typ == "OK"
        typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                names = flags.group(1).decode().split() if flags else []
                out.append((item[1].decode().split(":", 1)[1].strip(),
                            " ".join(f for f in names if f != "\\Recent")))
    return out


async def over_imap(lab: SmtpLab, user: str, box: str) -> list[tuple[str, str]]:
    from .imaputil import start_server, stop_server

    srv = await start_server(lab.app.cfg, lab.store)
    try:
        return await blocking(imap_folder, srv.port, user, box)
    finally:
        await stop_server(srv)


async def exmailctl_in_process(lab: SmtpLab, *argv: str) -> int:
    from exmaild.cli import _COMMANDS, build_parser

    args: argparse.Namespace = build_parser().parse_args(list(argv))
    return await _COMMANDS[(args.group, args.cmd)](lab.store, args)


@pytest_twisted.ensureDeferred
async def test_attachment_name_and_date_conditions(lab: SmtpLab) -> None:
    for box in ("Invoices", "Contracts", "Today", "Never"):
        await lab.store.pool.transaction(lambda c, b=box: imapfolders.create(c, lab.bob, b))
    now = datetime.now(ZONE)
    today = now.date().isoformat()
    hm = lambda d: d.strftime("%H:%M")  # noqa: E731
    rules = [
        {"name": "invoices", "stop": True,
         "conditions": [{"field": "attachment", "op": "contains", "value": "发票"}],
         "actions": [{"type": "move", "value": "Invoices"}, {"type": "tag", "value": "$Inv"}]},
        {"name": "contracts", "stop": True,
         "conditions": [{"field": "attachment", "op": "matches", "value": "合同*.PDF"}],
         "actions": [{"type": "move", "value": "Contracts"}]},
        {"name": "never", "match": "any", "stop": True,
         "conditions": [{"field": "date", "op": "before", "value": "2000-01-01"},
                        {"field": "weekday", "op": "is",
                         "value": [(int(now.strftime("%w")) + 3) % 7]},
                        {"field": "time", "op": "between",
                         "value": [hm(now + timedelta(hours=2)), hm(now + timedelta(hours=3))]}],
         "actions": [{"type": "move", "value": "Never"}]},
        {"name": "today", "match": "all",
         "conditions": [{"field": "date", "op": "between", "value": [today, today]},
                        {"field": "weekday", "op": "is", "value": [int(now.strftime("%w"))]},
                        {"field": "time", "op": "between",
                         "value": [hm(now - timedelta(hours=2)), hm(now + timedelta(hours=2))]},
                        {"field": "attachment", "op": "not_contains", "value": "发票"}],
         "actions": [{"type": "move", "value": "Today"}, {"type": "mark_read"}]},
    ]
    scripts = scripts_of(lab.app)
    await R.save(scripts, lab.bob, "bob@example.test", [R.Rule(r) for r in rules])
    # Both faces: the Sieve read back gives the same rules, none "custom".
    back = await R.load(scripts, lab.bob, "bob@example.test")
    assert [r.data for r in back] == rules and not any(r.custom for r in back)
    text = await scripts.get(lab.bob, R.SCRIPT_NAME)
    assert 'header :mime :anychild :param ["filename", "name"] :contains' in text
    # RFC 2231 (UTF-8, percent-encoded) and RFC 2047 (GBK, B) file names.
    gbk = base64.b64encode("合同2026.pdf".encode("gbk")).decode()
    for n, msg in (
            (1, with_attachment(1, "attachment; filename*=UTF-8''%E5%8F%91%E7%A5%A8-12.pdf")),
            (2, with_attachment(2, f'attachment; filename="=?GBK?B?{gbk}?="')),
            (3, with_attachment(3, "attachment; filename=report.pdf")),
            (4, mail(4))):
        assert await blocking(send, lab, msg, ["bob@example.test"]) == {}, n
    assert await blocking(placed, lab, "bob@example.test") == [
        ("Contracts", "message 2", 0, ""), ("Invoices", "message 1", 0, "$Inv"),
        ("Today", "message 3", 1, ""), ("Today", "message 4", 1, "")]
    assert await over_imap(lab, "bob@example.test", "Invoices") == [("message 1", "$Inv")]
    assert await over_imap(lab, "bob@example.test", "Today") == [
        ("message 3", "\\Seen"), ("message 4", "\\Seen")]


def test_dates_use_the_enterprise_time_zone() -> None:
    # 23:30 UTC is already the next day in Shanghai: a rule about "today"
    # means the enterprise's calendar day, not the host's.
    when = datetime(2026, 12, 20, 23, 30, tzinfo=UTC)
    script = parse(R.REQUIRE + R.compile_rule(
        {"conditions": [{"field": "date", "op": "between", "value": ["2026-12-21",
                                                                        "2026-12-21"]},
                        {"field": "weekday", "op": "is", "value": [1]},
                        {"field": "time", "op": "between", "value": ["07:00", "08:00"]}],
         "actions": [{"type": "move", "value": "X"}]}, "bob@example.test"))
    msg = MessageContext.from_bytes(mail(1), envelope_from="c@r.test", envelope_to="b@e.test")
    hit = evaluate(script, msg, now=when, zone=ZONE)
    assert [a.target for a in hit.actions] == ["X"]
    assert evaluate(script, msg, now=when, zone=UTC).actions == []
    # The auto-reply's date range follows the same clock.
    vac = parse(R.compile_rules([], "bob@example.test", {"text": "Away", "start": "2026-12-21"}))
    assert [a.kind for a in evaluate(vac, msg, now=when, zone=ZONE).actions] == ["vacation"]
    assert evaluate(vac, msg, now=when, zone=UTC).actions == []


def test_rule_conditions_are_checked() -> None:
    bad = [
        {"field": "date", "op": "between", "value": ["2026-01-01"]},
        {"field": "date", "op": "after", "value": "tomorrow"},
        {"field": "weekday", "op": "is", "value": [7]},
        {"field": "time", "op": "between", "value": ["25:00", "26:00"]},
        {"field": "attachment", "op": "over", "value": "x"},
        {"field": "attachment", "op": "contains", "value": ""},
    ]
    for c in bad:
        try:
            R.compile_rule({"conditions": [c], "actions": [{"type": "mark_read"}]}, "b@e.test")
        except R.RuleError:
            continue
        raise AssertionError(f"accepted {c}")
    # The mime tags outside :mime are a parse error with the place.
    try:
        parse('require "mime";\nif header :anychild "a" "b" { stop; }')
    except Exception as e:
        assert "line 2" in str(e) and ":mime" in str(e)
    else:
        raise AssertionError("accepted :anychild without :mime")


@pytest_twisted.ensureDeferred
async def test_vacation_only_to_known_senders(lab: SmtpLab) -> None:
    from exmaild.sieve import senders

    scripts = scripts_of(lab.app)
    await R.save(scripts, lab.bob, "bob@example.test", [],
                 vacation={"text": "Away this week.", "known_only": True})
    assert (await R.load_vacation(scripts, lab.bob)).data["known_only"] is True

    def replies() -> list[str]:
        return [r.recipient for r in lab.queue_rows() if r.sender == ""]

    with Logs() as logs:
        # A stranger: no reply, and the log says why.
        assert await blocking(send, lab, mail(1, sender="x@stranger.test"),
                              ["bob@example.test"], "x@stranger.test") == {}
        await wait_for(lambda: any("sender not known" in x for x in logs.lines))
    assert replies() == []
    # On bob's allow list (by domain): known.
    await lab.store.pool.transaction(
        lambda c: senders.add(c, lab.bob, "allow", "friends.test", "junk"))
    scripts.invalidate(lab.bob)
    assert await blocking(send, lab, mail(2, sender="ann@friends.test"),
                          ["bob@example.test"], "ann@friends.test") == {}
    await wait_for(lambda: replies() == ["ann@friends.test"])

    # Someone bob has written to (through submission; the mail log says so).
    def submit() -> Any:
        c = smtplib.SMTP_SSL("127.0.0.1", lab.submissions, context=insecure(), timeout=10)
        c.login("bob@example.test", PASSWORD)
        got = c.sendmail("bob@example.test", ["dave@remote.test"], mail(3, to="dave@remote.test"))
        c.quit()
        return got

    assert await blocking(submit) == {}

    def logged() -> bool:
        with lab.store.engine.connect() as c:
            return c.execute(sa.select(m.mail_log.c.id).where(
                m.mail_log.c.recipient == "dave@remote.test",
                m.mail_log.c.sender == "bob@example.test")).first() is not None

    await wait_for(logged)
    assert await blocking(send, lab, mail(4, sender="dave@remote.test"),
                          ["bob@example.test"], "dave@remote.test") == {}
    await wait_for(lambda: replies() == ["ann@friends.test", "dave@remote.test"])


@pytest_twisted.ensureDeferred
async def test_member_forwarding_policy(lab: SmtpLab) -> None:
    await R.save(scripts_of(lab.app), lab.bob, "bob@example.test", [R.Rule(
        {"conditions": [{"field": "subject", "op": "contains", "value": "fwd"}],
         "actions": [{"type": "forward", "value": ["far@remote.test"], "keep": False}]})])

    async def forwarded(n: int) -> bool:
        before = len(lab.queue_rows())
        msg = mail(n).replace(f"Subject: message {n}".encode(), f"Subject: fwd {n}".encode())
        assert await blocking(send, lab, msg, ["bob@example.test"]) == {}
        kept = f"fwd {n}" in [p[1] for p in await blocking(placed, lab, "bob@example.test")]
        sent = len(lab.queue_rows()) > before
        assert kept != sent  # keep: false, so exactly one of the two
        return sent

    assert await forwarded(1)  # the enterprise allows forwarding out
    assert await exmailctl_in_process(lab, "user", "set", "bob@example.test",
                                      "--forward-outside", "no") == 0
    with Logs() as logs:
        assert not await forwarded(2)
    assert any("may not forward outside" in x for x in logs.lines), logs.lines
    # The enterprise forbids it, the member is allowed: the member's wins.
    with lab.store.engine.begin() as c:
        eid = c.execute(sa.select(m.domains.c.enterprise_id)
                        .where(m.domains.c.name == "example.test")).scalar_one()
        c.execute(m.enterprises.update().where(m.enterprises.c.id == eid)
                  .values(settings={"forward_outside": False}))
    assert await exmailctl_in_process(lab, "user", "set", "bob@example.test",
                                      "--forward-outside", "yes") == 0
    assert await forwarded(3)
    assert await exmailctl_in_process(lab, "user", "set", "bob@example.test",
                                      "--forward-outside", "default") == 0
    assert not await forwarded(4)
    with lab.store.engine.connect() as c:
        actions = c.execute(sa.select(m.operation_log.c.action, m.operation_log.c.after)
                            .where(m.operation_log.c.action == "member.forwarding")
                            .order_by(m.operation_log.c.id)).all()
    assert [a[1]["forward_outside"] for a in actions] == [False, True, None]


def queued_copy(lab: SmtpLab, row: Any) -> bytes:
    """The bytes the queue sends for a row: its trace fields, then the stored
    message from body_offset (exmaild/queue/runner.py)."""
    with lab.store.engine.connect() as c:
        content = c.execute(sa.select(m.contents).where(
            m.contents.c.id == row.content_id)).one()
    from exmaild.store.blobs import BlobRef

    raw = lab.store.segments.read(BlobRef(content.segment, content.offset, content.size))
    return (row.trace or "").encode() + raw[row.body_offset:]


@pytest_twisted.ensureDeferred
async def test_delivered_to_stops_a_forwarding_loop(lab: SmtpLab) -> None:
    # bob forwards to alice's address at a domain that is elsewhere (over the
    # queue), alice forwards back: each remote leg is what the queue sends,
    # fed back into our MX as the other side's server would.
    scripts = scripts_of(lab.app)
    await R.save(scripts, lab.bob, "bob@example.test", [R.Rule(
        {"conditions": [{"field": "subject", "op": "contains", "value": "loop"}],
         "actions": [{"type": "forward", "value": ["bob@elsewhere.test"], "keep": False}]})])
    await R.save(scripts, lab.alice, "alice@example.test", [R.Rule(
        {"conditions": [{"field": "subject", "op": "contains", "value": "loop"}],
         "actions": [{"type": "forward", "value": ["alice@elsewhere.test"], "keep": False}]})])
    msg = mail(1).replace(b"Subject: message 1", b"Subject: loop")
    assert await blocking(send, lab, msg, ["bob@example.test"]) == {}
    [first] = lab.queue_rows()
    assert first.recipient == "bob@elsewhere.test"
    assert first.trace == "Delivered-To: bob@example.test\r\n"
    leg1 = queued_copy(lab, first)
    assert leg1.startswith(b"Delivered-To: bob@example.test\r\nReceived:")
    # The other side delivers it to alice (its own script forwarded it here).
    assert await blocking(send, lab, leg1, ["alice@example.test"], first.sender) == {}
    second = lab.queue_rows()[-1]
    assert second.recipient == "alice@elsewhere.test"
    leg2 = queued_copy(lab, second)
    assert leg2.startswith(b"Delivered-To: alice@example.test\r\n")
    assert b"Delivered-To: bob@example.test\r\n" in leg2
    # Back at bob: his delivery already forwarded it once. Kept, not sent.
    with Logs() as logs:
        assert await blocking(send, lab, leg2, ["bob@example.test"], second.sender) == {}
    assert len(lab.queue_rows()) == 2
    assert [p[:2] for p in await blocking(placed, lab, "bob@example.test")] == [
        ("INBOX", "loop")]
    assert any("already has Delivered-To: bob@example.test (a loop)" in x
               for x in logs.lines), logs.lines
    # alice reached through her alias: her own address in the trace still counts.
    with Logs() as logs:
        assert await blocking(send, lab, leg2, ["sales@example.test"], second.sender) == {}
    assert len(lab.queue_rows()) == 2
    assert any("already has Delivered-To" in x for x in logs.lines), logs.lines


@pytest_twisted.ensureDeferred
async def test_send_rules_file_the_sent_copy(lab: SmtpLab) -> None:
    for box in ("ToBoss", "Receipts"):
        await lab.store.pool.transaction(lambda c, b=box: imapfolders.create(c, lab.bob, b))
    rules = [
        {"name": "in", "conditions": [{"field": "subject", "op": "contains", "value": "x"}],
         "actions": [{"type": "tag", "value": "$In"}]},
        {"name": "boss", "kind": "send", "stop": True,
         "conditions": [{"field": "to_or_cc", "op": "contains", "value": "boss@"}],
         "actions": [{"type": "move", "value": "ToBoss"}, {"type": "tag", "value": "$Boss"}]},
        {"name": "receipts", "kind": "send",
         "conditions": [{"field": "attachment", "op": "contains", "value": "发票"},
                        {"field": "size", "op": "over", "value": 100}],
         "actions": [{"type": "copy", "value": "Receipts"}]},
        {"name": "gone", "kind": "send",
         "conditions": [{"field": "subject", "op": "is", "value": "to nowhere"}],
         "actions": [{"type": "move", "value": "Vanished"}]},
    ]
    try:
        R.compile_rule({"kind": "send", "conditions": [{"field": "body", "value": "x"}],
                        "actions": [{"type": "mark_read"}]}, "bob@example.test")
        raise AssertionError("a send rule on the body was accepted")
    except R.RuleError:
        pass
    scripts = scripts_of(lab.app)
    await R.save(scripts, lab.bob, "bob@example.test", [R.Rule(r) for r in rules])
    assert [r.data for r in await R.load(scripts, lab.bob, "bob@example.test")] == rules
    # Kept apart: the receive script is active, the send script is not.
    listed = {s.name: s.active for s in await scripts.list(lab.bob)}
    assert listed == {R.SCRIPT_NAME: True, R.SEND_SCRIPT: False}
    assert '"boss"' in (await scripts.get(lab.bob, R.SEND_SCRIPT))
    assert '"boss"' not in (await scripts.get(lab.bob, R.SCRIPT_NAME))

    def submit(to: str, msg: bytes) -> Any:
        c = smtplib.SMTP_SSL("127.0.0.1", lab.submissions, context=insecure(), timeout=10)
        c.login("bob@example.test", PASSWORD)
        got = c.sendmail("bob@example.test", [to], msg)
        c.quit()
        return got

    boss = mail(1, to="boss@remote.test", sender="bob@example.test")
    invoice = with_attachment(2, "attachment; filename*=UTF-8''%E5%8F%91%E7%A5%A8.pdf")
    gone = mail(4, sender="bob@example.test").replace(b"Subject: message 4",
                                                      b"Subject: to nowhere")
    with Logs() as logs:
        for to, msg in (("boss@remote.test", boss), ("dave@remote.test", invoice),
                        ("dave@remote.test", mail(3, sender="bob@example.test")),
                        ("dave@remote.test", gone)):
            assert await blocking(submit, to, msg) == {}
    assert await over_imap(lab, "bob@example.test", "ToBoss") == [("message 1",
                                                                   "\\Seen $Boss")]
    assert await over_imap(lab, "bob@example.test", "Receipts") == [("message 2", "\\Seen")]
    assert await over_imap(lab, "bob@example.test", "Sent") == [
        ("message 2", "\\Seen"), ("message 3", "\\Seen"), ("to nowhere", "\\Seen")]
    assert any("no folder 'Vanished'" in x for x in logs.lines), logs.lines
    # Every message went out whatever its Sent copy did.
    assert sorted(r.recipient for r in lab.queue_rows() if r.sender) == [
        "boss@remote.test", "dave@remote.test", "dave@remote.test", "dave@remote.test"]
    # With the member's save_sent off, no Sent copy and no send rules.
    await lab.store.directory.update_settings("bob@example.test", save_sent=False)
    lab.forget()
    assert await blocking(submit, "boss@remote.test", mail(5, to="boss@remote.test")) == {}
    assert [s for s, _ in await over_imap(lab, "bob@example.test", "ToBoss")] == ["message 1"]


@pytest_twisted.ensureDeferred
async def test_rules_run_on_stored_mail_use_the_arrival_date(lab: SmtpLab) -> None:
    from exmaild.sieve.apply import apply_rule

    await lab.store.pool.transaction(lambda c: imapfolders.create(c, lab.bob, "Old"))
    for n in (1, 2):
        assert await blocking(send, lab, mail(n), ["bob@example.test"]) == {}
    with lab.store.engine.begin() as c:  # message 1 arrived in 2020
        mid = c.execute(sa.select(m.messages.c.id).join(m.contents).where(
            m.contents.c.subject == "message 1")).scalar_one()
        c.execute(m.messages.update().where(m.messages.c.id == mid).values(
            internal_date=int(datetime(2020, 3, 1, tzinfo=UTC).timestamp())))
    rule = {"conditions": [{"field": "date", "op": "before", "value": "2021-01-01"}],
            "actions": [{"type": "move", "value": "Old"}]}
    acct = await lab.store.directory.get_account("bob@example.test")
    done = await apply_rule(lab.store, acct, rule, "INBOX", zone=ZONE)
    assert (done.examined, done.matched, done.moved) == (2, 1, 1)
    assert [p[:2] for p in await blocking(placed, lab, "bob@example.test")] == [
        ("INBOX", "message 2"), ("Old", "message 1")]

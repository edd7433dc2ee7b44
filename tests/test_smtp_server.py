"""The ESMTP server through real loopback sockets: in-process MX and submission
listeners on the real store (SQLite, and PostgreSQL when configured), driven by
smtplib and raw sockets off the reactor thread."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.store import model as m
from exmaild.store.blobs import PendingSync

from .smtputil import PASSWORD, SmtpLab, blocking, lab_fixture, mail

lab = lab_fixture()
tolerant = lab_fixture(limits={"smtp_errors": 100})
small = lab_fixture(
    limits={"message_size": 2000, "recipients": 3, "smtp_errors": 4, "smtp_idle_timeout": 1}
)


@pytest.fixture
def maillog() -> Iterator[list[str]]:
    """The Postfix-style mail log lines emitted during the test."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "exmaild.maillog":
            lines.append(f"{event['queue_id']}: {event['text']}")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def codes(reply: bytes) -> tuple[int, str]:
    """(code, enhanced) of the last line of a reply."""
    last = reply.rstrip(b"\r\n").split(b"\r\n")[-1].decode()
    return int(last[:3]), last[4:].split(" ")[0]


def plain(user: str, password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# -- MX: the happy path ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mx_delivers_with_trace_headers(lab: SmtpLab, maillog: list[str]) -> None:
    raw = mail(1)

    def session() -> tuple[dict, bytes]:
        c = smtplib.SMTP("127.0.0.1", lab.mx, timeout=10)
        c.ehlo("client.remote.test")
        refused = c.sendmail("carol@remote.test", ["BOB@Example.Test"], raw)
        reply = c.docmd("NOOP")[1]
        c.quit()
        return refused, reply

    refused, _ = await blocking(session)
    assert refused == {}
    [stored] = lab.entries("bob@example.test")
    head, _, rest = stored.partition(b"\r\nFrom: ")
    assert b"From: " + rest == raw  # the message itself is stored byte for byte
    lines = head.split(b"\r\n")
    assert lines[0] == b"Return-Path: <carol@remote.test>"
    assert lines[1] == b"Received: from client.remote.test ([127.0.0.1])"
    assert lines[2].startswith(b"\tby mx.example.test (exmaild) with ESMTP id ")
    assert lines[3].startswith(b"\tfor <BOB@example.test>; ")
    qid = lines[2].split()[-1].decode()
    assert lab.count(m.queue_messages) == 0  # plain inbound mail stays off the queue
    assert f"{qid}: client=unknown[127.0.0.1], listener=smtp" in maillog
    assert f"{qid}: message-id=<m1@remote.test>" in maillog
    assert f"{qid}: from=<carol@remote.test>, size={len(stored)}, nrcpt=1 (queue active)" in (
        maillog
    )
    assert any(line.startswith(f"{qid}: to=<BOB@example.test>, relay=local, delay=")
               and line.endswith("status=sent (delivered to mailbox)") for line in maillog)


@pytest_twisted.ensureDeferred
async def test_ehlo_capabilities_per_listener(lab: SmtpLab) -> None:
    def session() -> list[list[bytes]]:
        out = []
        c = smtplib.SMTP("127.0.0.1", lab.mx, timeout=10)
        out.append(c.ehlo()[1].split(b"\n")[1:])
        c.starttls()
        out.append(c.ehlo()[1].split(b"\n")[1:])
        c.quit()
        c = smtplib.SMTP("127.0.0.1", lab.submission, timeout=10)
        out.append(c.ehlo()[1].split(b"\n")[1:])
        c.quit()
        c = smtplib.SMTP_SSL("127.0.0.1", lab.submissions, timeout=10,
                             context=_insecure())
        out.append(c.ehlo()[1].split(b"\n")[1:])
        c.login("bob@example.test", PASSWORD)
        out.append(c.ehlo()[1].split(b"\n")[1:])
        c.quit()
        return out

    mx, mx_tls, sub, subs, subs_authed = await blocking(session)
    common = [b"ENHANCEDSTATUSCODES", b"8BITMIME", b"DSN", b"SMTPUTF8"]
    assert mx == [b"PIPELINING", b"SIZE 52428800", b"STARTTLS", *common]
    assert mx_tls == [b"PIPELINING", b"SIZE 52428800", *common]  # no AUTH on port 25
    # Plaintext from loopback is allowed here (the default), so AUTH shows before TLS.
    assert sub == [b"PIPELINING", b"SIZE 52428800", b"STARTTLS", b"AUTH PLAIN LOGIN", *common]
    assert subs == [b"PIPELINING", b"SIZE 52428800", b"AUTH PLAIN LOGIN", *common]
    assert subs_authed == [b"PIPELINING", b"SIZE 52428800", *common]


def _insecure():  # type: ignore[no-untyped-def]
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest_twisted.ensureDeferred
async def test_many_local_recipients_one_blob(lab: SmtpLab) -> None:
    for i in range(5):
        await lab.add_user(f"user{i}@example.test")
    rcpts = [f"user{i}@example.test" for i in range(5)]
    rcpts += ["alice@example.test", "sales@example.test"]  # one mailbox, two addresses

    def session() -> dict:
        c = smtplib.SMTP("127.0.0.1", lab.mx, timeout=10)
        refused = c.sendmail("carol@remote.test", rcpts, mail(2))
        c.quit()
        return refused

    assert await blocking(session) == {}
    assert lab.count(m.contents) == 1
    assert lab.count(m.messages) == 6  # alice once, though named twice
    assert len(lab.entries("alice@example.test")) == 1
    [blob] = lab.entries("user3@example.test")
    assert b"\tby mx.example.test (exmaild) with ESMTP id " in blob
    assert b"for <" not in blob  # several recipients: none named in Received


@pytest_twisted.ensureDeferred
async def test_notify_success_gets_a_delivered_report(lab: SmtpLab) -> None:
    from .queuelab import wait_for

    def session() -> None:
        c = smtplib.SMTP("127.0.0.1", lab.mx, timeout=10)
        c.ehlo("dsn.test")
        # NOTIFY=SUCCESS from a local sender: the report lands in her INBOX.
        c.sendmail("alice@example.test", ["bob@example.test"], mail(7),
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.test"])
        # Failure-only, and the null sender: no report.
        c.sendmail("alice@example.test", ["bob@example.test"], mail(8),
                   rcpt_options=["NOTIFY=FAILURE"])
        c.sendmail("<>", ["bob@example.test"], mail(9), rcpt_options=["NOTIFY=SUCCESS"])
        # A remote sender with RET=FULL: the report is queued to carol's server.
        c.sendmail("carol@remote.test", ["bob@example.test"], mail(10),
                   mail_options=["RET=FULL", "ENVID=e-10"], rcpt_options=["NOTIFY=SUCCESS"])
        c.quit()

    await blocking(session)
    [report] = await wait_for(lambda: lab.entries("alice@example.test"))
    assert report.startswith(b"Return-Path: <>\r\n")
    assert b"Subject: Successful Mail Delivery Report" in report
    assert b"Content-Type: message/delivery-status" in report
    assert b"Final-Recipient: rfc822; bob@example.test" in report
    assert b"Original-Recipient: rfc822;bob@example.test" in report
    assert b"Action: delivered" in report and b"Status: 2.0.0" in report
    assert b"text/rfc822-headers" in report  # the header only, by default
    queued = await wait_for(lambda: [r for r in lab.queue_rows() if r.sender == ""])
    assert [(r.recipient, r.status) for r in queued] == [("carol@remote.test", "queued")]
    full = await lab.store.read_message(queued[0].content_id)
    assert b"message/rfc822" in full and b"Original-Envelope-Id: e-10" in full
    assert len(lab.entries("bob@example.test")) == 4
    assert len(lab.entries("alice@example.test")) == 1  # nothing for the other two


# -- MX: refusals ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_user_and_relay_are_refused_and_logged(
    lab: SmtpLab, maillog: list[str]
) -> None:
    def session() -> list[bytes]:
        r = lab.raw()
        out = [r.cmd("EHLO client.test"), r.cmd("MAIL FROM:<carol@remote.test>")]
        out += [r.cmd("RCPT TO:<nobody@example.test>"), r.cmd("RCPT TO:<x@other.test>")]
        out += [r.cmd("RCPT TO:<bob@example.test>"), r.cmd("RCPT TO:<nobody@example.test>")]
        out.append(r.cmd("QUIT"))
        r.close()
        return out

    _, _, unknown, relay, ok, unknown2, _ = await blocking(session)
    assert unknown == (b"550 5.1.1 <nobody@example.test>: Recipient address rejected: "
                       b"User unknown\r\n")
    assert relay == b"554 5.7.1 <x@other.test>: Relay access denied\r\n"
    assert codes(ok) == (250, "2.1.5")
    assert codes(unknown2) == (550, "5.1.1")
    assert ("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1 <x@other.test>: "
            "Relay access denied; from=<carol@remote.test> to=<x@other.test> proto=ESMTP "
            "helo=<client.test>") in maillog
    # After a recipient was accepted the transaction has its queue id, as in Postfix.
    assert any(not line.startswith("NOQUEUE") and "reject: RCPT" in line
               and "to=<nobody@example.test>" in line for line in maillog)


# At least 15 address tricks an open relay might fall for; all refused without AUTH.
RELAY_TRICKS = [
    "<x@other.test>",
    "<x@OTHER.TEST>",
    "<x@other.test.>",
    "<x%other.test@example.test>",  # percent hack
    "<X%OTHER.TEST@EXAMPLE.TEST>",
    '<"x@other.test"@example.test>',  # quoted local part with @
    '<"x%other.test"@example.test>',
    "<other.test!x@example.test>",  # bang path
    "<@example.test:x@other.test>",  # source route: the route is dropped
    "<@example.test,@example.test:x@other.test>",
    "<x@[127.0.0.1]>",  # IP literals
    "<x@[IPv6:::1]>",
    "<x@127.0.0.1>",
    "<postmaster@other.test>",  # postmaster tricks
    "<postmaster%other.test@example.test>",
    "<@example.test:postmaster@other.test>",
    "<x@example.test.other.test>",  # suffix and prefix look-alikes
    "<x@sub.example.test>",
    "<x@xexample.test>",
    "<x@example.test@other.test>",  # syntax the parser refuses
    "<x@other.test,>",
    "<x@other.test> <y@example.test>",
    '<""@example.test>',
    "x@other.test",
]


@pytest_twisted.ensureDeferred
async def test_open_relay_battery(tolerant: SmtpLab) -> None:
    lab = tolerant

    def session() -> list[tuple[str, bytes]]:
        r = lab.raw()
        r.cmd("EHLO relay.test")
        out = []
        for path in RELAY_TRICKS:
            assert codes(r.cmd("RSET"))[0] == 250
            assert codes(r.cmd("MAIL FROM:<spam@spam.test>"))[0] == 250
            out.append((path, r.cmd(f"RCPT TO:{path}")))
        r.close()
        return out

    results = await blocking(session)
    assert len(results) == len(RELAY_TRICKS)
    for path, reply in results:
        assert reply[:1] == b"5", (path, reply)
    assert lab.count(m.messages) == 0 and lab.count(m.queue_messages) == 0


@pytest_twisted.ensureDeferred
async def test_postmaster_without_domain_reaches_the_postmaster(lab: SmtpLab) -> None:
    await lab.add_user("postmaster@example.test")

    def session() -> dict:
        c = smtplib.SMTP("127.0.0.1", lab.mx, timeout=10)
        refused = c.sendmail("<>", ["postmaster"], mail(3))
        c.quit()
        return refused

    assert await blocking(session) == {}
    [blob] = lab.entries("postmaster@example.test")
    assert blob.startswith(b"Return-Path: <>\r\n")


# -- PIPELINING and STARTTLS -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pipelined_replies_come_in_order(lab: SmtpLab) -> None:
    lab.forget()  # nothing cached: the first RCPTs wait for the directory
    await lab.add_user("dave@example.test")
    body = mail(4) + b".\r\n"

    def session() -> list[bytes]:
        r = lab.raw()
        assert codes(r.cmd("EHLO pipe.test"))[0] == 250
        r.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<dave@example.test>\r\n"
               b"RCPT TO:<ghost@example.test>\r\nRCPT TO:<x@other.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        out = [r.reply() for _ in range(6)]
        # The message, and the next transaction pipelined right behind its end.
        r.send(body + b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"
               b"DATA\r\n")
        out += [r.reply() for _ in range(4)]
        r.send(body + b"QUIT\r\n")
        out += [r.reply(), r.reply()]
        r.close()
        return out

    replies = await blocking(session)
    assert [codes(x) for x in replies] == [
        (250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (554, "5.7.1"), (250, "2.1.5"),
        (354, "End"), (250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (354, "End"),
        (250, "2.0.0"), (221, "2.0.0"),
    ]
    assert len(lab.entries("dave@example.test")) == 1
    assert len(lab.entries("bob@example.test")) == 2


@pytest_twisted.ensureDeferred
async def test_starttls_discards_plaintext_injection(lab: SmtpLab) -> None:
    def session() -> tuple[bytes, bytes, bytes, bytes]:
        r = lab.raw()
        r.cmd("EHLO inject.test")
        # A man in the middle appends a command to the STARTTLS packet (CVE-2011-0411).
        r.send(b"STARTTLS\r\nRSET\r\n")
        ready = r.reply()
        r.sock.settimeout(0.5)
        try:
            leaked = r.sock.recv(100)  # nothing more may come in the clear
        except TimeoutError:
            leaked = b""
        r.sock.settimeout(10)
        r.starttls()
        r.send(b"MAIL FROM:<carol@remote.test>\r\n")  # state was reset: EHLO first
        after = r.reply()
        ehlo = r.cmd("EHLO inject.test")
        r.close()
        return ready, leaked, after, ehlo

    ready, leaked, after, ehlo = await blocking(session)
    assert ready == b"220 2.0.0 Ready to start TLS\r\n"
    assert leaked == b""
    # The first reply inside TLS is to MAIL, not to the injected RSET.
    assert after == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    assert ehlo.startswith(b"250-mx.example.test\r\n") and b"STARTTLS" not in ehlo


@pytest_twisted.ensureDeferred
async def test_starttls_refused_when_active_or_mid_transaction(lab: SmtpLab) -> None:
    def session() -> list[bytes]:
        r = lab.raw()
        out = [r.cmd("STARTTLS")]
        r.cmd("EHLO t.test")
        r.cmd("MAIL FROM:<carol@remote.test>")
        out.append(r.cmd("STARTTLS"))
        r.cmd("RSET")
        out.append(r.cmd("STARTTLS"))
        r.starttls()
        r.cmd("EHLO t.test")
        out.append(r.cmd("STARTTLS"))
        r.close()
        return out

    before_ehlo, in_txn, ok, again = await blocking(session)
    assert codes(before_ehlo) == (503, "5.5.1")
    assert codes(in_txn) == (503, "5.5.1")
    assert codes(ok) == (220, "2.0.0")
    assert again == b"554 5.5.1 Error: TLS already active\r\n"


# -- limits ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_size_is_refused_at_mail_and_at_end_of_data(small: SmtpLab) -> None:
    lab = small

    def session() -> list[bytes]:
        r = lab.raw()
        out = [r.cmd("EHLO size.test")]
        out.append(r.cmd("MAIL FROM:<carol@remote.test> SIZE=2001"))
        out.append(r.cmd("MAIL FROM:<carol@remote.test> SIZE=100"))  # a lie
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("DATA")
        r.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + (b"y" * 998 + b"\r\n") * 3)
        r.send(b".\r\n")
        out.append(r.reply())
        out.append(r.cmd("NOOP"))
        r.close()
        return out

    ehlo, declared, lie, data, noop = await blocking(session)
    assert b"250-SIZE 2000\r\n" in ehlo
    assert codes(declared) == (552, "5.3.4")
    assert codes(lie) == (250, "2.1.0")
    assert codes(data) == (552, "5.3.4")
    assert codes(noop) == (250, "2.0.0")  # the session goes on
    assert lab.count(m.messages) == 0 and lab.count(m.contents) == 0


@pytest_twisted.ensureDeferred
async def test_recipient_and_error_limits(small: SmtpLab) -> None:
    lab = small
    for i in range(4):
        await lab.add_user(f"r{i}@example.test")

    def session() -> tuple[list[bytes], list[bytes]]:
        r = lab.raw()
        r.cmd("EHLO limit.test")
        r.cmd("MAIL FROM:<carol@remote.test>")
        rcpts = [r.cmd(f"RCPT TO:<r{i}@example.test>") for i in range(4)]
        r.cmd("RSET")
        errors = [r.cmd("FOO") for _ in range(4)]
        errors.append(r.reply())  # the 421 after the last error
        errors.append(r.reply())  # then EOF
        r.close()
        return rcpts, errors

    rcpts, errors = await blocking(session)
    assert [codes(x) for x in rcpts] == [(250, "2.1.5")] * 3 + [(452, "4.5.3")]
    assert [codes(x)[0] for x in errors[:4]] == [502] * 4
    assert errors[4] == b"421 4.7.0 mx.example.test Error: too many errors\r\n"
    assert errors[5] == b""


@pytest_twisted.ensureDeferred
async def test_idle_timeout_and_long_lines(small: SmtpLab) -> None:
    lab = small

    def session() -> tuple[bytes, bytes, bytes]:
        r = lab.raw()
        long = r.cmd(b"NOOP " + b"x" * 3000)
        t0 = time.monotonic()
        timeout = r.reply()  # nothing sent: the 1 s idle timeout fires
        assert time.monotonic() - t0 < 5
        r.close()
        r = lab.raw()
        r.send(b"NOOP " + b"x" * 20000 + b"\r\n")  # beyond any line we frame: hang up
        huge = r.reply() + r.reply()
        r.close()
        return long, timeout, huge

    long, timeout, huge = await blocking(session)
    assert long == b"500 5.5.2 Error: line too long\r\n"
    assert timeout == b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    assert huge == b"500 5.5.2 Error: line too long\r\n"


# -- durability ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("fails", ["write", "fdatasync"])
async def test_storage_error_is_451_and_nothing_is_half_done(
    lab: SmtpLab, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    if lab.store.blobs_in_database:  # EXMAILD_TEST_BLOBS_BACKEND=postgresql
        if fails == "fdatasync":
            pytest.skip("contents in the database: no fdatasync of ours")
        # The chunks fail after the content row is inserted: all rolls back.
        from exmaild.store import dbblobs

        monkeypatch.setattr(dbblobs, "write_chunks", broken)
    elif fails == "write":
        monkeypatch.setattr(lab.store.segments, "write", broken)
    else:  # the blob's sync runs beside the statements: they must not commit
        monkeypatch.setattr(PendingSync, "sync", broken)

    def session() -> tuple[bytes, bytes]:
        r = lab.raw()
        r.cmd("EHLO disk.test")
        r.cmd("MAIL FROM:<carol@remote.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("RCPT TO:<alice@example.test>")
        r.cmd("DATA")
        reply = r.cmd(mail(5) + b".")
        after = r.cmd("MAIL FROM:<carol@remote.test>")  # the transaction is over
        r.close()
        return reply, after

    reply, after = await blocking(session)
    assert reply == b"452 4.3.1 Insufficient system storage\r\n"  # ENOSPC, as Postfix says
    assert codes(after) == (250, "2.1.0")
    assert lab.count(m.messages) == 0 and lab.count(m.contents) == 0


@pytest_twisted.ensureDeferred
async def test_connection_lost_mid_data_stores_nothing(lab: SmtpLab) -> None:
    def session() -> None:
        r = lab.raw()
        r.cmd("EHLO drop.test")
        r.cmd("MAIL FROM:<carol@remote.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("DATA")
        r.send(mail(6) + b"more text, but no terminator\r\n")
        r.close()

    await blocking(session)
    await _settle()
    assert lab.count(m.messages) == 0 and lab.count(m.contents) == 0


async def _settle(seconds: float = 0.2) -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_quota_checked_at_rcpt_and_all_or_nothing_at_data(lab: SmtpLab) -> None:
    await lab.store.directory.set_quota("alice@example.test", 20_000)
    await lab.store.directory.set_quota("bob@example.test", 20_000)
    filler = b"Subject: filler\r\n\r\n" + b"z" * 19_000 + b"\r\n"
    await lab.store.ingestor.ingest(IngestRequest(filler, [Target(lab.alice)]))
    lab.forget()

    def refuse_at_rcpt() -> bytes:
        r = lab.raw()
        r.cmd("EHLO quota.test")
        r.cmd("MAIL FROM:<carol@remote.test> SIZE=5000")
        reply = r.cmd("RCPT TO:<alice@example.test>")
        r.close()
        return reply

    assert await blocking(refuse_at_rcpt) == (
        b"452 4.2.2 <alice@example.test>: Mailbox full\r\n")

    # Bob has room at RCPT; by the end of DATA he has not (the RCPT check used
    # the cached account): nobody gets the message, and the client retries.
    def race() -> bytes:
        r = lab.raw()
        r.cmd("EHLO quota.test")
        r.cmd("MAIL FROM:<carol@remote.test> SIZE=2000")
        assert codes(r.cmd("RCPT TO:<sales@example.test>"))[0] == 452  # alice, still full
        assert codes(r.cmd("RCPT TO:<bob@example.test>"))[0] == 250
        r.cmd("DATA")
        r.send(b"Subject: late\r\n\r\n" + b"w" * 5000 + b"\r\n")
        return r

    client = await blocking(race)
    await lab.store.ingestor.ingest(IngestRequest(filler, [Target(lab.bob)]))

    def finish() -> bytes:
        reply = client.cmd(b".")
        client.close()
        return reply

    assert await blocking(finish) == b"452 4.2.2 <bob@example.test>: Mailbox full\r\n"
    assert len(lab.entries("bob@example.test")) == 1  # only the filler
    assert lab.count(m.contents) == 1  # the filler (one blob); the refused message left nothing


@pytest_twisted.ensureDeferred
async def test_utf8_addresses_need_smtputf8(lab: SmtpLab) -> None:
    def session() -> list[bytes]:
        r = lab.raw()
        r.cmd("EHLO utf8.test")
        out = [r.cmd("MAIL FROM:<jörg@bücher.test>".encode())]
        out.append(r.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8 BODY=8BITMIME".encode()))
        out.append(r.cmd("RCPT TO:<jörg@example.test>".encode()))
        out.append(r.cmd("RCPT TO:<bob@example.test>"))
        out.append(r.cmd("DATA"))
        out.append(r.cmd("Subject: Grüße\r\n\r\nÄ\r\n.".encode()))
        r.close()
        return out

    no_flag, ok, unknown, bob, _, done = await blocking(session)
    assert codes(no_flag) == (553, "5.6.7")
    assert codes(ok) == (250, "2.1.0")
    assert codes(unknown) == (550, "5.1.1")
    assert codes(bob) == (250, "2.1.5") and codes(done) == (250, "2.0.0")
    [blob] = lab.entries("bob@example.test")
    assert "Return-Path: <jörg@bücher.test>".encode() in blob
    assert b" with UTF8SMTP id " in blob and "Grüße".encode() in blob

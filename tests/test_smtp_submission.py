"""Submission (587 STARTTLS, 465 implicit TLS): AUTH, send-as, headers added,
local delivery at once, the queue for the rest, and the Sent copy."""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest
import pytest_twisted
import sqlalchemy as sa

from exmaild.store import flags
from exmaild.store import model as m

from .smtputil import PASSWORD, SmtpLab, blocking, lab_fixture

lab = lab_fixture()
strict = lab_fixture(allow_plaintext_loopback=False)
mx_auth = lab_fixture(smtp={"mx_auth": True}, allow_plaintext_loopback=False)

NO_IDS = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nBody.\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def codes(reply: bytes) -> tuple[int, str]:
    last = reply.rstrip(b"\r\n").split(b"\r\n")[-1].decode()
    return int(last[:3]), last[4:].split(" ")[0]


# -- AUTH ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_auth_plain_and_login_exchanges(lab: SmtpLab) -> None:
    def session() -> list[bytes]:
        out = []
        r = lab.raw(lab.submission)
        out.append(r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD)))  # no EHLO
        r.cmd("EHLO c.test")
        out.append(r.cmd("AUTH CRAM-MD5"))
        out.append(r.cmd("AUTH PLAIN"))  # empty challenge, then the response
        out.append(r.cmd("*"))  # cancelled
        out.append(r.cmd("AUTH LOGIN"))
        out.append(r.cmd("not base64!"))
        out.append(r.cmd("AUTH LOGIN " + b64("bob@example.test")))  # initial response
        out.append(r.cmd(b64(PASSWORD)))
        out.append(r.cmd("AUTH LOGIN"))
        r.close()
        r = lab.raw(lab.submission)
        r.cmd("EHLO c.test")
        out.append(r.cmd("AUTH PLAIN"))
        out.append(r.cmd(b64("\0alice@example.test\0" + PASSWORD)))
        r.close()
        return out

    (no_ehlo, cram, plain_c, cancel, login_c, bad, login_pw, login_ok, again,
     plain_c2, plain_ok) = await blocking(session)
    assert codes(no_ehlo) == (503, "5.5.1")
    assert codes(cram) == (504, "5.5.4")
    assert plain_c == b"334 \r\n"
    assert cancel == b"501 5.7.0 Authentication aborted\r\n"
    assert login_c == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    assert codes(bad) == (501, "5.5.2")
    assert login_pw == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    assert login_ok == b"235 2.7.0 Authentication successful\r\n"
    assert codes(again) == (503, "5.5.1")
    assert plain_c2 == b"334 \r\n" and codes(plain_ok) == (235, "2.7.0")


@pytest_twisted.ensureDeferred
async def test_failed_logins_end_the_connection(lab: SmtpLab) -> None:
    await lab.store.directory.set_enabled("alice@example.test", False)
    lab.forget()

    def session() -> list[bytes]:
        r = lab.raw(lab.submission)
        r.cmd("EHLO c.test")
        out = [r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0Wrong1Pass"))]
        out.append(r.cmd("AUTH PLAIN " + b64("\0alice@example.test\0" + PASSWORD)))  # disabled
        out.append(r.cmd("AUTH PLAIN " + b64("\0nobody@example.test\0" + PASSWORD)))
        out.append(r.reply())
        out.append(r.reply())
        r.close()
        return out

    wrong, disabled, unknown, closing, eof = await blocking(session)
    for reply in (wrong, disabled, unknown):
        assert reply == b"535 5.7.8 Error: authentication failed\r\n"
    assert closing == b"421 4.7.0 mx.example.test Error: too many errors\r\n"
    assert eof == b""


@pytest_twisted.ensureDeferred
async def test_smtp_needs_the_imap_or_pop_switch(lab: SmtpLab) -> None:
    await lab.store.directory.update_settings("bob@example.test", imap_enabled=False)

    def login() -> bytes:
        r = lab.raw(lab.submission)
        r.cmd("EHLO c.test")
        reply = r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD))
        r.close()
        return reply

    assert codes(await blocking(login)) == (235, "2.7.0")  # POP/SMTP is still on
    await lab.store.directory.update_settings("bob@example.test", pop_enabled=False)
    assert codes(await blocking(login)) == (535, "5.7.8")


@pytest_twisted.ensureDeferred
async def test_submission_needs_tls_then_auth(strict: SmtpLab) -> None:
    lab = strict

    def session() -> list[bytes]:
        r = lab.raw(lab.submission)
        out = [r.cmd("EHLO c.test")]
        out.append(r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD)))
        out.append(r.cmd("MAIL FROM:<bob@example.test>"))
        r.cmd("STARTTLS")
        r.starttls()
        out.append(r.cmd("EHLO c.test"))
        out.append(r.cmd("MAIL FROM:<bob@example.test>"))
        out.append(r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD)))
        out.append(r.cmd("MAIL FROM:<bob@example.test>"))
        r.close()
        r = lab.raw(lab.mx)  # the MX offers no AUTH by default
        r.cmd("EHLO c.test")
        out.append(r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD)))
        r.close()
        return out

    ehlo, auth_plain, mail_plain, ehlo_tls, mail_noauth, auth_tls, mail_ok, mx = (
        await blocking(session))
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    assert auth_plain == (b"538 5.7.11 Encryption required for requested authentication "
                          b"mechanism\r\n")
    assert mail_plain == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert b"250-AUTH PLAIN LOGIN\r\n" in ehlo_tls
    assert mail_noauth == b"530 5.7.0 Authentication required\r\n"
    assert codes(auth_tls) == (235, "2.7.0") and codes(mail_ok) == (250, "2.1.0")
    assert mx == b"503 5.5.1 Error: authentication not enabled\r\n"


@pytest_twisted.ensureDeferred
async def test_mx_auth_when_configured_permits_relay(mx_auth: SmtpLab) -> None:
    lab = mx_auth

    def session() -> list[bytes]:
        r = lab.raw(lab.mx)
        out = [r.cmd("EHLO c.test")]
        r.cmd("MAIL FROM:<bob@example.test>")
        out.append(r.cmd("RCPT TO:<x@remote.test>"))
        r.cmd("RSET")
        r.cmd("STARTTLS")
        r.starttls()
        out.append(r.cmd("EHLO c.test"))
        out.append(r.cmd("AUTH PLAIN " + b64("\0bob@example.test\0" + PASSWORD)))
        r.cmd("MAIL FROM:<bob@example.test>")
        out.append(r.cmd("RCPT TO:<x@remote.test>"))
        r.close()
        return out

    ehlo, denied, ehlo_tls, auth, relayed = await blocking(session)
    assert b"AUTH" not in ehlo and codes(denied) == (554, "5.7.1")
    assert b"250-AUTH PLAIN LOGIN\r\n" in ehlo_tls and codes(auth) == (235, "2.7.0")
    assert codes(relayed) == (250, "2.1.5")


# -- sending ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_as_own_address_or_alias_only(lab: SmtpLab) -> None:
    def session() -> list[bytes]:
        r = lab.raw(lab.submission)
        r.cmd("EHLO c.test")
        r.cmd("AUTH PLAIN " + b64("\0alice@example.test\0" + PASSWORD))
        out = []
        for sender in ("<bob@example.test>", "<>", "<alice@other.test>",
                       "<ALICE@Example.Test>", "<sales@example.test>"):
            out.append(r.cmd(f"MAIL FROM:{sender}"))
            r.cmd("RSET")
        r.close()
        return out

    bob, null, other, own, alias = await blocking(session)
    assert bob == (b"553 5.7.1 <bob@example.test>: Sender address rejected: not owned by "
                   b"user alice@example.test\r\n")
    assert codes(null) == (553, "5.7.1") and codes(other) == (553, "5.7.1")
    assert codes(own) == (250, "2.1.0") and codes(alias) == (250, "2.1.0")


@pytest_twisted.ensureDeferred
async def test_submission_local_now_remote_queued_sent_copy(lab: SmtpLab) -> None:
    def session() -> dict:
        c = smtplib.SMTP_SSL("127.0.0.1", lab.submissions, context=insecure(), timeout=10)
        c.login("alice@example.test", PASSWORD)
        refused = c.sendmail("sales@example.test", ["bob@example.test", "carol@remote.test"],
                             NO_IDS, rcpt_options=["NOTIFY=SUCCESS,FAILURE",
                                                   "ORCPT=rfc822;carol@remote.test"])
        c.quit()
        return refused

    assert await blocking(session) == {}
    [inbox] = lab.entries("bob@example.test")
    [sent] = lab.entries("alice@example.test", "Sent")
    assert inbox == sent  # one blob for every copy
    head, _, body = inbox.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"Return-Path: <sales@example.test>"
    assert lines[1] == b"Received: from [127.0.0.1] ([127.0.0.1])"
    assert lines[2].startswith(b"\t(using TLSv1.")
    assert lines[3].startswith(b"\tby mx.example.test (exmaild) with ESMTPSA id ")
    qid = lines[3].split(b" id ")[1][:12].decode()
    # Missing Message-ID and Date are added at the end of the header section.
    assert lines[4:7] == [b"From: Alice <alice@example.test>", b"To: bob@example.test",
                          b"Subject: hi"]
    assert lines[7] == f"Message-ID: <{lines[7][13:-1].decode()}>".encode()
    assert lines[7].endswith(f".{qid}@mx.example.test>".encode())
    assert lines[8].startswith(b"Date: ") and len(lines) == 9
    assert body == b"Body.\r\n"
    with lab.store.engine.connect() as c:
        sent_flags = c.execute(
            sa.select(m.messages.c.flags).join(m.mailboxes)
            .where(m.mailboxes.c.name == "Sent")
        ).scalar_one()
    assert sent_flags == flags.SEEN
    rows = lab.queue_rows()
    assert [(r.recipient, r.status) for r in rows] == [
        ("carol@remote.test", "queued"), ("bob@example.test", "delivered")]
    row = rows[0]
    assert (row.queue_id, row.sender, row.account_id) == (qid, "sales@example.test", lab.alice)
    assert (row.notify, row.orcpt) == ("SUCCESS,FAILURE", "rfc822;carol@remote.test")
    assert row.body_offset == len(b"Return-Path: <sales@example.test>\r\n")
    relayed = inbox[row.body_offset:]
    assert relayed.startswith(b"Received: from ")  # the queue skips only Return-Path
    assert lab.app.queue.kicks == 1  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_submission_keeps_ids_and_respects_save_sent(lab: SmtpLab) -> None:
    await lab.store.directory.update_settings("alice@example.test", save_sent=False)
    msg = (b"From: alice@example.test\r\nMessage-ID: <own@x>\r\ndate: Fri, 27 Nov 2026 "
           b"10:00:00 +0800\r\nSubject: x\r\n\r\nHi.\r\n")

    def session() -> dict:
        c = smtplib.SMTP("127.0.0.1", lab.submission, timeout=10)
        c.starttls(context=insecure())
        c.login("alice@example.test", PASSWORD)
        refused = c.sendmail("alice@example.test", ["bob@example.test"], msg,
                             mail_options=["RET=HDRS", "ENVID=abc+2B1"])
        c.quit()
        return refused

    assert await blocking(session) == {}
    [inbox] = lab.entries("bob@example.test")
    assert inbox.endswith(msg) and inbox.count(b"Message-ID") == 1
    assert inbox.lower().count(b"\ndate:") == 1
    assert lab.entries("alice@example.test", "Sent") == []
    # Local recipients of submitted mail are recorded for the status view only.
    [row] = lab.queue_rows()
    assert (row.recipient, row.status, row.ret, row.envid) == (
        "bob@example.test", "delivered", "HDRS", "abc+1")
    assert lab.app.queue.kicks == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest_twisted.ensureDeferred
async def test_smtplib_login_mechanisms(lab: SmtpLab, mechanism: str) -> None:
    def session() -> dict:
        c = smtplib.SMTP("127.0.0.1", lab.submission, timeout=10)
        c.starttls(context=insecure())
        c.ehlo()
        c.user, c.password = "bob@example.test", PASSWORD
        c.auth(mechanism, getattr(c, f"auth_{mechanism.lower()}"),
               initial_response_ok=mechanism == "PLAIN")
        refused = c.sendmail("bob@example.test", ["alice@example.test"], NO_IDS)
        c.quit()
        return refused

    assert await blocking(session) == {}
    assert len(lab.entries("alice@example.test")) == 1

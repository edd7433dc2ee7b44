"""SRS round trip (issue 13): a member's Sieve redirect to an outside address
leaves through the outbound queue (a relayhost: a small SMTP sink on
127.0.0.1) with an SRS0 envelope sender of the member's domain; a bounce to
that address sent into our MX is relayed to the original sender; a forged
SRS address is refused like an unknown user. On SQLite and PostgreSQL."""

from __future__ import annotations

import smtplib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, write_config
from .test_admin_api import PW, ok

FWD = "fwd@acme.test"


@dataclass
class Got:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SinkState:
    messages: list[Got] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    """Just enough SMTP to take a message: every command is accepted."""

    def handle(self) -> None:
        state: SinkState = self.server.state  # type: ignore[attr-defined]
        self.wfile.write(b"220 sink.test ESMTP\r\n")
        sender, rcpts = "", []
        while line := self.rfile.readline():
            cmd = line.decode("latin-1").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250-sink.test\r\n250 8BITMIME\r\n")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].split()[0].strip("<>"), []
                self.wfile.write(b"250 ok\r\n")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].split()[0].strip("<>"))
                self.wfile.write(b"250 ok\r\n")
            elif verb == "DATA":
                self.wfile.write(b"354 go on\r\n")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                with state.lock:
                    state.messages.append(Got(sender, rcpts, data))
                self.wfile.write(b"250 queued\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("srs")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.state = SinkState()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink_port = server.server_address[1]
    config, ports = write_config(
        tmp, db_url, queue={"relayhost": f"[127.0.0.1]:{sink_port}", "relayhost_tls": "none",
                            "scan_interval": 0.5, "retry_schedule": [1]},
        sieve={"srs_secret": "test secret"})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    for who in (FWD, "ann@acme.test"):
        ok(config, "user", "add", who, "--password-stdin", stdin=f"{PW}\n")
    script = tmp / "fwd.sieve"
    script.write_text('require ["copy"];\nredirect :copy "out@elsewhere.test";\n')
    ok(config, "sieve", "put", FWD, "fwd", str(script))
    ok(config, "sieve", "activate", FWD, "fwd")
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"ports": ports, "sink": server.state, "config": config}  # type: ignore[attr-defined]
    d.stop()
    server.shutdown()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def wait_for(fn: Any, timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.2)


def sink_for(state: SinkState, rcpt: str) -> list[Got]:
    with state.lock:
        return [g for g in state.messages if rcpt in g.recipients]


def test_forward_with_srs_and_the_bounce_back(env: dict[str, Any]) -> None:
    ports, sink = env["ports"], env["sink"]
    msg = (b"From: Carol <carol@remote.test>\r\nTo: fwd@acme.test\r\nSubject: to forward\r\n"
           b"Message-ID: <srs-1@remote.test>\r\n\r\nPlease forward.\r\n")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        assert s.sendmail("carol@remote.test", [FWD], msg) == {}
    out = wait_for(lambda: sink_for(sink, "out@elsewhere.test"))
    assert len(out) == 1, out
    srs = out[0].sender
    assert srs.startswith("SRS0=") and srs.endswith("=remote.test=carol@acme.test"), srs
    assert b"Subject: to forward" in out[0].data
    assert b"Return-Path:" not in out[0].data

    # The receiver bounces to the SRS address: our MX takes it (even with the
    # local part's case changed on the way) and relays it to carol.
    bounce = (b"From: MAILER-DAEMON@elsewhere.test\r\nTo: " + srs.encode()
              + b"\r\nSubject: Undelivered Mail Returned to Sender\r\n"
              b"Auto-Submitted: auto-replied\r\n\r\nout@elsewhere.test: no such user\r\n")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        assert s.sendmail("", [srs.upper()], bounce) == {}
    back = wait_for(lambda: sink_for(sink, "carol@remote.test")
                    or sink_for(sink, "CAROL@REMOTE.TEST"))
    assert len(back) == 1, back
    assert back[0].sender == ""  # still a bounce: the null sender
    assert b"Undelivered Mail Returned to Sender" in back[0].data

    # A forged or mangled SRS address is an unknown user.
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        s.mail("")
        h = srs.split("=")[1]
        forged = srs.replace(f"SRS0={h}=", "SRS0=aaaaaaaa=").replace("carol@", "mallory@")
        code, text = s.rcpt(forged)
        assert (code, text.split()[0]) == (550, b"5.1.1"), (forged, text)
        code, text = s.rcpt(srs.replace("carol@", "mallory@"))
        assert (code, text.split()[0]) == (550, b"5.1.1")


def test_local_sender_is_not_rewritten(env: dict[str, Any]) -> None:
    ports, sink = env["ports"], env["sink"]
    msg = (b"From: ann@acme.test\r\nTo: fwd@acme.test\r\nSubject: from a colleague\r\n"
           b"Message-ID: <srs-2@acme.test>\r\n\r\nHi.\r\n")
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        s.ehlo("client.test")
        s.login("ann@acme.test", PW)
        assert s.sendmail("ann@acme.test", [FWD], msg) == {}
    got = wait_for(lambda: [g for g in sink_for(sink, "out@elsewhere.test")
                            if b"from a colleague" in g.data])
    assert [g.sender for g in got] == ["ann@acme.test"]
    listed = ok(env["config"], "queue", "list", "--all")
    assert "out@elsewhere.test" in listed


def test_bounce_to_an_srs_address_of_a_local_sender_is_delivered_here(
        env: dict[str, Any]) -> None:
    """An SRS address whose original sender is (now) hosted here: the bounce
    goes to that member's INBOX, not out through the queue."""
    import imaplib

    from exmaild.sieve.srs import SRS

    ports = env["ports"]
    srs = SRS(b"test secret").forward("ann@acme.test", "acme.test")
    bounce = (b"From: MAILER-DAEMON@elsewhere.test\r\nTo: " + srs.encode()
              + b"\r\nSubject: returned to ann\r\n\r\nNo such user.\r\n")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        assert s.sendmail("", [srs], bounce) == {}

    def subjects() -> list[bytes]:
        with imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30) as c:
            c.login("ann@acme.test", PW)
            c.select("INBOX", readonly=True)
            typ, data = c.search(None, "SUBJECT", '"returned to ann"')
            return data[0].split()

    assert len(wait_for(subjects)) == 1
    assert not sink_for(env["sink"], "ann@acme.test")

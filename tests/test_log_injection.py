"""Text from the network never forges a log line: control characters in a
remote server's replies and in a client's HELO and MAIL FROM are escaped in
the text log (mail lines and the rest); the JSON log stays one record per
line. The real daemon (twistd), a scripted remote SMTP server, raw sockets."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, threads

from exmaild.config import load_config
from exmaild.logsetup import escape_controls
from exmaild.mailstore.service import MailStore

from .daemon import Daemon, write_config
from .queuelab import Behaviour, FakeSMTP, message, queue_mail, statuses, wait_for

FORGED = "FORGED"


def _rcpt(addr: str) -> str:
    if addr.startswith("bob"):
        return f"550 5.1.1 <{addr}>: unknown\n{FORGED}-1 sshd[1]: Failed password for root"
    if addr.startswith("carol"):
        return f"450 4.2.0 <{addr}>: busy\r{FORGED}-2 sshd[1]: Failed password for root"
    return "250 2.1.5 Ok"


def _smtp_client(port: int) -> list[bytes]:
    """Control characters in HELO and MAIL FROM (refused as bad syntax), and
    in an AUTH PLAIN user name (decoded from base64: it reaches the log)."""
    user = f"x\n{FORGED}-4 sshd[1]: Failed password for root"
    plain = base64.b64encode(f"\0{user}\0wrong".encode())
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        replies.append(f.readline())
        for line in (b"EHLO evil.test\r" + FORGED.encode() + b"-8 x\x1b[2J",
                     b"EHLO client.test",
                     b"MAIL FROM:<a\x0b" + FORGED.encode() + b"-9@remote.test>",
                     b"AUTH PLAIN " + plain,
                     b"QUIT"):
            s.sendall(line + b"\r\n")
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            replies.append(reply)
    return replies


def _imap_client(port: int) -> list[bytes]:
    """A LOGIN whose user name is a literal with CR LF and an escape in it."""
    user = f"y\r\n{FORGED}-5 \x1b[2J".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        out = [f.readline()]
        s.sendall(b"a LOGIN {%d}\r\n" % len(user))
        out.append(f.readline())
        s.sendall(user + b" wrong\r\n")
        out.append(f.readline())
        s.sendall(b"b LOGOUT\r\n")
        out += [f.readline(), f.readline()]
    return out


def _forged_lines(text: str) -> list[str]:
    # splitlines: every line break a reader may honour (CR, LF, NEL, U+2028, ...)
    return [ln for ln in text.splitlines() if ln.lstrip().startswith(FORGED)]


@pytest_twisted.ensureDeferred
async def test_remote_replies_and_client_arguments_cannot_forge_log_lines(
    tmp_path: Path,
) -> None:
    remote = FakeSMTP(Behaviour(
        rcpt=_rcpt,
        data_reply=f"250 2.0.0 Ok\n{FORGED}-3 \u2028{FORGED}-7 queued",
    ))
    listener = reactor.listenTCP(0, remote, interface="127.0.0.1")
    port = listener.getHost().port
    config, ports = write_config(tmp_path, queue={
        "relayhost": f"[127.0.0.1]:{port}", "scan_interval": 0.3, "retry_schedule": [3600],
        "connect_timeout": 2,
    })
    store = MailStore(load_config(str(config)), reactor)
    store.open()
    store.startService()
    await store.directory.add_domain("example.test")
    daemon = Daemon(config, ports, tmp_path)
    try:
        qid = await queue_mail(store, "", ["bob@remote.test", "carol@remote.test",
                                           "dave@remote.test"], message("Hello"))
        daemon.start()
        await wait_for(lambda: {s for s, _ in statuses(store, qid).values()}
                       == {"bounced", "deferred", "sent"}, timeout=15)
        replies = await threads.deferToThread(_smtp_client, ports["submission"])
        assert [r[:3] for r in replies] == [b"220", b"500", b"250", b"500", b"535", b"221"], \
            replies
        imap = await threads.deferToThread(_imap_client, ports["imap"])
        assert imap[1].startswith(b"+") and imap[2].startswith(b"a NO"), imap

        log = await threads.deferToThread(daemon.wait_for_log, "imap login failed")
        assert f"{qid}: to=<carol@remote.test>" in log
        # Every piece of injected text is in the log, escaped on its own line.
        for n in (1, 2, 3, 4, 5, 7):
            assert f"{FORGED}-{n}" in log, n
        assert "unknown\\nFORGED-1" in log and "busy\\rFORGED-2" in log
        assert "Ok\\nFORGED-3 \\u2028FORGED-7" in log
        assert "sasl_username=x\\nFORGED-4" in log
        assert "user=y\\r\\nFORGED-5 \\x1b[2J" in log
        assert _forged_lines(log) == []
        assert "\x1b" not in log and "\x85" not in log and "\u2028" not in log

        # The JSON log: each line one record; raw values survive inside them.
        json_log = (tmp_path / "var" / "log" / "exmaild.json").read_text("utf-8")
        records = [json.loads(ln) for ln in json_log.split("\n") if ln]
        assert any(f"unknown\n{FORGED}-1" in r.get("mail_status_text", "") for r in records)
        assert any(f"user=y\r\n{FORGED}-5" in r.get("text", "") for r in records)
        assert _forged_lines(json_log) == []
    finally:
        daemon.kill()
        await listener.stopListening()
        store.stopService()


def test_escape_controls() -> None:
    assert escape_controls("plain text, é 中") == "plain text, é 中"
    assert escape_controls("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i") == (
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i")

"""Big messages are streamed to a spool file, not held whole in memory (issue 9
item 12): the real daemon takes four 45 MB messages at once over SMTP and
then over IMAP APPEND while its private memory (RssAnon, from /proc) is
sampled; every message then comes back byte-exact over IMAP, and messages
exactly at and one octet over the size limit get 250 and 552 5.3.4.

RssAnon, not VmRSS: a spool file read through mmap and the SQLite file are
page-cache pages (RssFile), shared with the kernel and reclaimable; the
anonymous pages are what the daemon holds on the messages' behalf.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .daemon import Daemon, exmailctl, write_config

PASSWORD = "Secr3tPass9"
BIG = 45_000_000
LIMIT = 46 * 1024 * 1024  # [limits] message_size for the test
# On 8dfcac9 the four SMTP messages took RssAnon from ~65 MB to ~410 MB
# (VmRSS ~435 MB), the four APPENDs to ~380 MB. Spooled, four messages in
# flight hold a 256 KiB head at most each and the chunks in transit: RssAnon
# stays near idle. VmRSS also counts the spool files' pages while they are
# mapped for parsing and the blob write (page cache, at most the messages'
# size), hence its looser bound.
ANON_BOUND_MB = 150
VMRSS_BOUND_MB = 320


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Sampler:
    """Peak RssAnon and VmRSS of a process while the `with` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = {"RssAnon": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for field in self.peak:
                self.peak[field] = max(self.peak[field], status_kb(self.pid, field))
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self, field: str) -> float:
        return self.peak[field] / 1024


def big_message(n: int, size: int = BIG) -> bytes:
    """A MIME message of exactly `size` octets: a text part whose lines start
    with dots (DATA transparency) and a base64 attachment of random bytes."""
    head = (
        f"From: Sender <sender@remote.test>\r\nTo: bob@example.test\r\n"
        f"Subject: big {n}\r\nMessage-ID: <big{n}@remote.test>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n'
        f"--b{n}\r\nContent-Type: text/plain\r\n\r\n"
        ".leading dot\r\n..two dots\r\n.\r\nnot the end\r\n"
        f"--b{n}\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="x{n}"'
        "\r\n\r\n"
    ).encode()
    tail = f"\r\n--b{n}--\r\n".encode()
    room = size - len(head) - len(tail)
    lines, extra = divmod(room, 78)
    encoded = base64.b64encode(os.urandom(lines * 57))
    body = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"
    body += b"." * extra  # a last line of dots, unterminated: the tail's CRLF ends it
    msg = head + body + tail
    assert len(msg) == size
    return msg


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_all(fn: Callable[[int], object], n: int) -> list[object]:
    out: list[object] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = fn(i)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    config, ports = write_config(tmp_path, limits={"message_size": LIMIT})
    assert exmailctl(config, "domain", "add", "example.test").returncode == 0
    r = exmailctl(config, "user", "add", "bob@example.test", "--password", PASSWORD)
    assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp_path)
    d.start()
    yield d
    d.kill()


def imap(d: Daemon) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", d.ports["imap"], timeout=120)
    c.login("bob@example.test", PASSWORD)
    return c


def fetch_all(d: Daemon, mailbox: str) -> dict[bytes, list[bytes]]:
    """The messages of a mailbox by Subject line, over IMAP."""
    c = imap(d)
    try:
        c.select(mailbox, readonly=True)
        typ, data = c.uid("SEARCH", "ALL")
        out = {}
        for uid in data[0].split():
            typ, parts = c.uid("FETCH", uid, "(BODY.PEEK[])")
            assert typ == "OK"
            raw = parts[0][1]
            subject = next(line for line in raw.split(b"\r\n") if line.startswith(b"Subject:"))
            out.setdefault(subject, []).append(raw)
        return out
    finally:
        c.logout()


def test_big_messages_stream_through_smtp_and_append(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    msgs = [big_message(i) for i in range(8)]
    idle = status_kb(pid, "RssAnon") / 1024

    def send(i: int) -> object:
        with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=300) as c:
            return c.sendmail("sender@remote.test", ["bob@example.test"], msgs[i])

    with Sampler(pid) as smtp_peak:
        assert run_all(send, 4) == [{}] * 4

    def append(i: int) -> object:
        c = imap(daemon)
        try:
            return c.append("Archive" if i else "INBOX", None, None, msgs[4 + i])[0]
        finally:
            c.logout()

    c = imap(daemon)
    c.create("Archive")
    c.logout()
    with Sampler(pid) as append_peak:
        assert run_all(append, 4) == ["OK"] * 4
    print(f"RssAnon idle {idle:.0f} MB; peak SMTP {smtp_peak.mb('RssAnon'):.0f} MB "
          f"(VmRSS {smtp_peak.mb('VmRSS'):.0f}), APPEND {append_peak.mb('RssAnon'):.0f} MB "
          f"(VmRSS {append_peak.mb('VmRSS'):.0f})")

    # Byte-exact: SMTP adds only Return-Path and Received in front.
    inbox = fetch_all(daemon, "INBOX")
    inbox.update(fetch_all(daemon, "Archive"))
    assert len(inbox) == 8
    for i, msg in enumerate(msgs):
        [got] = inbox[f"Subject: big {i}".encode()]
        if i < 4:
            head, _, rest = got.partition(b"\r\nFrom: Sender")
            assert head.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: from ")
            got = b"From: Sender" + rest
        assert sha(got) == sha(msg), f"message {i} differs"

    for peak in (smtp_peak, append_peak):
        assert peak.mb("RssAnon") < ANON_BOUND_MB
        assert peak.mb("VmRSS") < VMRSS_BOUND_MB
    assert os.listdir(daemon.cwd / "var" / "spool") == []


def test_size_limit_exactly_and_one_over(daemon: Daemon) -> None:
    at = big_message(100, LIMIT)
    over = big_message(101, LIMIT + 1)
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=300) as c:
        c.ehlo("client.test")
        # No SIZE= parameter, so the limit is enforced on the data itself.
        assert c.mail("sender@remote.test")[0] == 250
        assert c.rcpt("bob@example.test")[0] == 250
        assert c.data(at)[0] == 250
        assert c.mail("sender@remote.test")[0] == 250
        assert c.rcpt("bob@example.test")[0] == 250
        code, text = c.data(over)
        assert (code, text[:5]) == (552, b"5.3.4"), (code, text)
        assert c.noop()[0] == 250  # the session goes on
    c2 = imap(daemon)
    try:
        assert c2.append("INBOX", None, None, at)[0] == "OK"
        typ, data = c2.append("INBOX", None, None, over)
        assert typ == "NO" and b"[TOOBIG]" in data[0]
    finally:
        c2.logout()
    [(subject, (smtp_copy, append_copy))] = fetch_all(daemon, "INBOX").items()
    assert smtp_copy.endswith(b"\r\n" + at) and append_copy == at
    assert os.listdir(daemon.cwd / "var" / "spool") == []

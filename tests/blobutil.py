"""Helpers for the blob store tests against the real daemon: stdlib clients
(smtplib, imaplib, poplib) and checks of what the daemon holds open."""

from __future__ import annotations

import hashlib
import imaplib
import os
import poplib
import re
import smtplib
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .daemon import exmailctl, write_config

USER = "bob@example.test"
PASSWORD = "Secr3tPass"


def message(n: int, size: int = 2000, tag: str = "m") -> bytes:
    """A unique message of about `size` bytes; no body line starts with a dot."""
    head = (
        f"From: <carol@remote.test>\r\nTo: <{USER}>\r\nSubject: {tag} {n}\r\n"
        f"Message-ID: <{tag}{n}@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n\r\n"
    )
    lines = []
    total = len(head)
    i = 0
    while total < size:
        line = f"{tag}{n} line {i} " + hashlib.sha256(f"{tag}{n}/{i}".encode()).hexdigest() + "\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return (head + "".join(lines)).encode()


def setup(tmp: Path, db_url: str, **sections: dict[str, Any]) -> tuple[Path, dict[str, int]]:
    config, ports = write_config(tmp, db_url, **sections)
    for args in (("domain", "add", "example.test"),
                 ("user", "add", USER, "--password", PASSWORD)):
        r = exmailctl(config, *args)
        assert r.returncode == 0, r.stderr
    return config, ports


def smtp_send(port: int, raw: bytes) -> tuple[int, bytes]:
    """The reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.remote.test")
        code, text = s.mail("carol@remote.test")
        assert code == 250, text
        code, text = s.rcpt(USER)
        assert code == 250, text
        return s.data(raw)


def imap_login(port: int) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(USER, PASSWORD)
    return c


def imap_append(port: int, raw: bytes) -> tuple[str, bytes]:
    c = imap_login(port)
    try:
        typ, data = c.append("INBOX", None, None, raw)
        return typ, data[0] or b""
    finally:
        c.logout()


def imap_fetch_all(port: int) -> list[bytes]:
    """Every message of the INBOX in UID order, by BODY.PEEK[]."""
    c = imap_login(port)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0]) == 0:
            return []
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK", data
        return [part[1] for part in data if isinstance(part, tuple)]
    finally:
        c.logout()


def imap_delete(port: int, keep_every: int) -> None:
    """Expunge every message but each `keep_every`-th (by sequence number)."""
    c = imap_login(port)
    try:
        typ, data = c.select("INBOX")
        n = int(data[0])
        doomed = [str(i) for i in range(1, n + 1) if i % keep_every]
        if doomed:
            c.store(",".join(doomed), "+FLAGS.SILENT", r"(\Deleted)")
            c.expunge()
    finally:
        c.logout()


def pop3_all(port: int) -> list[bytes]:
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        p.user(USER)
        p.pass_(PASSWORD)
        count, _ = p.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = p.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        p.quit()


def delivered(stored: bytes, sent: bytes) -> bool:
    """Stored by SMTP: our trace header fields, then exactly what was sent."""
    return stored.startswith(b"Return-Path: <carol@remote.test>\r\nReceived: ") and \
        stored.endswith(b"\r\n" + sent)


def deleted_segments_open(pid: int) -> list[str]:
    """Segment files the process holds open that no longer exist."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if re.search(r"\.seg \(deleted\)$", target):
            out.append(target)
    return out


def segment_rows(db_url: str, data: Path) -> dict[str, tuple[bool, str | None]]:
    """(sealed, owner) per segments row, straight from the database."""
    url = db_url or f"sqlite:///{data / 'exmaild.sqlite'}"
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT name, sealed, owner FROM segments")).all()
        return {r[0]: (bool(r[1]), r[2]) for r in rows}
    finally:
        eng.dispose()

"""exmailctl backup / backup verify / restore against the real daemon under SMTP load."""

from __future__ import annotations

import dataclasses
import imaplib
import json
import shutil
import smtplib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, threads

from exmaild.config import BlobsConfig, Config, PathsConfig
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.service import MailStore
from exmaild.ops import backup as bk

from .conftest import PG_URL
from .daemon import Daemon, env, exmailctl, write_config
from .opsutil import snapshot

USER, PASSWORD = "alice@example.test", "Secr3tPass"
SEGMENT = 256 * 1024  # small segments: the backup spans several


def message(n: int, size: int = 0) -> bytes:
    body = "".join(f"line {i} of message {n}: {'x' * 60}\r\n" for i in range(size // 80 + 3))
    return (f"From: <bob@remote.test>\r\nTo: <{USER}>\r\nSubject: message {n}\r\n"
            f"Message-ID: <b{n}.{uuid.uuid4().hex}@remote.test>\r\n"
            "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\n"
            f"From the start of message {n}\r\n{body}").encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(source, restore target) database URLs: "" is SQLite under the data folder."""
    if request.param == "sqlite":
        yield "", ""
        return
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    names = [f"exmaild_b_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin.connect() as c:
        for n in names:
            c.execute(sa.text(f'CREATE DATABASE "{n}"'))
    base = sa.engine.make_url(PG_URL)
    yield tuple(base.set(database=n).render_as_string(hide_password=False)  # type: ignore[misc]
                for n in names)
    with admin.connect() as c:
        for n in names:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
    admin.dispose()


def _setup_account(config: Path) -> None:
    for args in (("domain", "add", "example.test"),
                 ("user", "add", USER, "--password", PASSWORD)):
        r = exmailctl(config, *args)
        assert r.returncode == 0, r.stderr


def _decorate(port: int) -> None:
    """Flags, a keyword and a nested folder, through IMAP."""
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    assert imap.uid("STORE", "1:5", "+FLAGS", "(\\Seen)")[0] == "OK"
    assert imap.uid("STORE", "3", "+FLAGS", "(\\Flagged $Label1)")[0] == "OK"
    assert imap.uid("STORE", "4", "+FLAGS", "(\\Answered \\Deleted)")[0] == "OK"
    assert imap.create("Projects/2026")[0] == "OK"
    assert imap.uid("COPY", "2:6", "Projects/2026")[0] == "OK"
    imap.logout()


class Sender(threading.Thread):
    """Sends mail over SMTP until stopped; `acked` counts the 250s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.acked, self.stop_now, self.error = port, 0, threading.Event(), None

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                n = 1000
                while not self.stop_now.is_set():
                    n += 1
                    s.sendmail("bob@remote.test", [USER], message(n, 3000 + (n % 7) * 9000))
                    self.acked += 1
        except Exception as e:  # reported by the test
            self.error = e


def test_backup_under_smtp_load_restores_byte_exact(tmp_path: Path,
                                                   db_urls: tuple[str, str]) -> None:
    src_url, dst_url = db_urls
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config, ports = write_config(tmp_path / "a", src_url, blobs={"segment_size": SEGMENT})
    _setup_account(config)
    live = Daemon(config, ports, tmp_path / "a")
    live.start()
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"]) as s:
            for n in range(1, 21):
                s.sendmail("bob@remote.test", [USER], message(n, n * 4000))
        _decorate(ports["imap"])

        sender = Sender(ports["smtp"])
        sender.start()
        while sender.acked < 5 and sender.is_alive():
            sender.join(0.05)
        acked_before = sender.acked
        dest = tmp_path / "backup"
        r = exmailctl(config, "backup", str(dest))
        sender.stop_now.set()
        sender.join(30)
        assert sender.error is None, sender.error
        assert r.returncode == 0, r.stderr
        assert sender.acked > acked_before  # mail kept flowing during the backup
        before = snapshot(ports["imap"], USER, PASSWORD)
    finally:
        live.stop()

    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["schema_revision"] and manifest["files"]
    assert sum(1 for f in manifest["files"] if f.startswith("blobs/")) > 1
    r = exmailctl(config, "backup", "verify", str(dest))
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout, r.stderr)

    # Restore into a new data folder and database with a new config.
    config2, ports2 = write_config(tmp_path / "b", dst_url)
    r = exmailctl(config2, "restore", str(dest))
    assert r.returncode == 0, r.stderr
    restored_daemon = Daemon(config2, ports2, tmp_path / "b")
    restored_daemon.start()
    try:
        after = snapshot(ports2["imap"], USER, PASSWORD)
    finally:
        restored_daemon.stop()

    assert set(after) == set(before)
    for name, folder in after.items():
        live_folder = before[name]
        assert folder.uidvalidity == live_folder.uidvalidity, name
        # Everything in the backup is byte for byte what the live server has
        # under the same UID, with the same flags.
        for uid, got in folder.messages.items():
            assert live_folder.messages.get(uid) == got, (name, uid)
    inbox = after["INBOX"].messages
    # Every message acknowledged before the backup started is in it.
    assert set(range(1, 21 + acked_before)) <= set(inbox)
    assert inbox[3][0] == {"\\Seen", "\\Flagged", "$Label1"}
    assert inbox[4][0] == {"\\Seen", "\\Answered", "\\Deleted"}
    assert len(after["Projects/2026"].messages) == 5

    # A second restore into the same (no longer empty) store is refused in one line.
    r = exmailctl(config2, "restore", str(dest))
    assert r.returncode != 0
    assert "not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_backup_verify_detects_corruption(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, blobs={"segment_size": SEGMENT})
    _setup_account(config)
    live = Daemon(config, ports, tmp_path)
    live.start()
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"]) as s:
            for n in range(1, 11):
                s.sendmail("bob@remote.test", [USER], message(n, 20000))
        dest = tmp_path / "backup"
        assert exmailctl(config, "backup", str(dest)).returncode == 0
        r = exmailctl(config, "backup", str(dest))  # DEST must be new
        assert r.returncode != 0 and "not an empty directory" in r.stderr
    finally:
        live.stop()
    assert exmailctl(config, "backup", "verify", str(dest)).returncode == 0

    # One flipped byte in a segment: its checksum and the body's digest fail.
    bad = tmp_path / "bad"
    shutil.copytree(dest, bad)
    seg = sorted((bad / "blobs").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x20
    seg.write_bytes(bytes(data))
    r = exmailctl(config, "backup", "verify", str(bad))
    assert r.returncode == 1
    assert "checksum mismatch" in r.stdout and "do not match its digest" in r.stdout, r.stdout

    # A truncated segment: bodies past its end are reported missing.
    cut = tmp_path / "cut"
    shutil.copytree(dest, cut)
    seg = sorted((cut / "blobs").glob("*.seg"))[-1]
    seg.write_bytes(seg.read_bytes()[:100])
    r = exmailctl(config, "backup", "verify", str(cut))
    assert r.returncode == 1 and "not in the backup" in r.stdout, r.stdout

    # A corrupt backup is not restored.
    (tmp_path / "new").mkdir()
    config2, _ = write_config(tmp_path / "new")
    r = exmailctl(config2, "restore", str(bad))
    assert r.returncode == 1 and "fails verification" in r.stderr
    assert not (tmp_path / "new" / "var").exists()

    # No store to back up: one line, nothing created, not even DEST.
    r = exmailctl(config2, "backup", str(tmp_path / "b2"))
    assert r.returncode == 1 and "no database at" in r.stderr, r.stderr
    assert not (tmp_path / "b2").exists() and not (tmp_path / "new" / "var").exists()
    r = exmailctl(config2, "backup", "verify", str(tmp_path / "new"))
    assert r.returncode == 1 and "holds no manifest.json" in r.stderr, r.stderr


@pytest_twisted.ensureDeferred
async def test_backup_retries_when_compaction_removes_a_segment(cfg: Config,
                                                                tmp_path: Path) -> None:
    """A segment the snapshot references is compacted away before it is copied:
    the backup takes a new snapshot, and still holds every message."""
    from twisted.internet import reactor

    # Segments of ~9 KB: each gets one big message (expunged below) and one
    # small one (kept), so compaction moves the small ones and removes them.
    cfg = dataclasses.replace(cfg, blobs=BlobsConfig(segment_size=9000, compact_ratio=0.5))
    store = MailStore(cfg, reactor)
    store.open()
    store.startService()
    try:
        await store.directory.add_domain("example.test")
        acct = await store.directory.add_account(USER, "x")
        for n in range(6):
            for size in (7800, 1000):
                await store.ingestor.ingest(IngestRequest(message(n * 10 + size, size),
                                                          [Target(acct.id)]))
        inbox = await store.mailboxes.get(acct.id, "INBOX")
        assert inbox is not None
        entries = await store.mailboxes.messages([inbox.id])
        await store.mailboxes.expunge_ids([e.id for e in entries if e.size > 5000])
        kept = {e.content_id: await store.read_message(e.content_id)
                for e in entries if e.size < 5000}
        before = {r.segment for r in (await store.blob_refs(list(kept))).values()}

        said: list[str] = []
        compacted: list[Any] = []

        def compact_now() -> None:
            if not compacted:  # only before the first copy
                compacted.append(threads.blockingCallFromThread(
                    reactor, lambda: defer.Deferred.fromCoroutine(store.compact())))

        dest = tmp_path / "backup"
        manifest = await threads.deferToThread(bk.backup, cfg, dest, said.append, compact_now)
        assert compacted[0].segments_removed >= 1
        after = {r.segment for r in (await store.blob_refs(list(kept))).values()}
        assert before - after, "compaction moved none of the kept messages"
        assert any("compacted away" in s for s in said), said
        assert set(manifest["segments"]) == after
        rep = await threads.deferToThread(bk.verify, dest)
        assert not rep.problems and rep.blobs == len(kept)
    finally:
        store.stopService()
    if cfg.database.url:
        return  # restoring needs a second empty PostgreSQL database: the daemon test does it
    new = dataclasses.replace(cfg, paths=PathsConfig(data=str(tmp_path / "restored")))
    await threads.deferToThread(bk.restore, new, dest, said.append)
    restored = MailStore(new, reactor)
    restored.open()
    restored.startService()
    try:
        for cid, raw in kept.items():
            assert await restored.read_message(cid) == raw
    finally:
        restored.stopService()


def test_postgresql_backup_without_pg_dump(tmp_path: Path, db_urls: tuple[str, str]) -> None:
    """No pg_dump on PATH: the blobs are backed up with a warning; the dump
    taken by hand as docs/backup.md says is restored first, then the blobs."""
    src_url, dst_url = db_urls
    if not src_url:
        pytest.skip("PostgreSQL only")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config, ports = write_config(tmp_path / "a", src_url, blobs={"segment_size": SEGMENT})
    _setup_account(config)
    live = Daemon(config, ports, tmp_path / "a")
    live.start()
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"]) as s:
            for n in range(1, 16):
                s.sendmail("bob@remote.test", [USER], message(n, n * 5000))
        _decorate(ports["imap"])
        before = snapshot(ports["imap"], USER, PASSWORD)
    finally:
        live.stop()  # the docs' recipe: mail stopped while dump and blobs are taken

    dump = tmp_path / "by-hand.pgdump"
    plain = sa.engine.make_url(src_url).set(drivername="postgresql")
    subprocess.run(["pg_dump", "--format=custom", "--no-owner", f"--file={dump}",
                    f"--dbname={plain.render_as_string(hide_password=False)}"], check=True)
    dest = tmp_path / "blobs-only"
    no_pg = {**env(), "PATH": "/nonexistent"}
    r = subprocess.run([sys.executable, "-m", "exmaild.cli", "--config", str(config),
                        "backup", str(dest)], capture_output=True, text=True, env=no_pg)
    assert r.returncode == 0, r.stderr
    assert "pg_dump is not installed" in r.stderr and "docs/backup.md" in r.stdout
    assert json.loads((dest / "manifest.json").read_text())["database_file"] is None
    assert exmailctl(config, "backup", "verify", str(dest)).returncode == 0

    config2, ports2 = write_config(tmp_path / "b", dst_url)
    r = exmailctl(config2, "restore", str(dest))
    assert r.returncode == 1 and "pg_restore your own dump" in r.stderr, r.stderr
    target = sa.engine.make_url(dst_url).set(drivername="postgresql")
    subprocess.run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                    f"--dbname={target.render_as_string(hide_password=False)}", str(dump)],
                   check=True)
    r = exmailctl(config2, "restore", str(dest))
    assert r.returncode == 0, r.stderr
    restored = Daemon(config2, ports2, tmp_path / "b")
    restored.start()
    try:
        after = snapshot(ports2["imap"], USER, PASSWORD)
    finally:
        restored.stop()
    assert {n: (f.uidvalidity, f.messages) for n, f in after.items()} == {
        n: (f.uidvalidity, f.messages) for n, f in before.items()}

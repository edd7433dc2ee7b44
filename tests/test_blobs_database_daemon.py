"""[blobs] backend = "postgresql" through the real daemon: SMTP in, IMAP and
POP3 out, two nodes with no shared blob directory, `exmailctl blobs migrate`
while mail arrives, backup and restore."""

from __future__ import annotations

import hashlib
import json
import smtplib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from .blobutil import (
    PASSWORD,
    USER,
    delivered,
    imap_delete,
    imap_fetch_all,
    message,
    pop3_all,
    setup,
    smtp_send,
)
from .clusterutil import two_nodes
from .conftest import PG_URL
from .daemon import Daemon, exmailctl, write_config
from .opsutil import snapshot

PG = {"backend": "postgresql"}
BIG = 3 * 1024 * 1024 + 4321  # over ten chunks


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (contents in the database need it)")
    from .conftest import _wipe_pg

    url = request.getfixturevalue("pg_database")
    _wipe_pg(url)
    return url


@pytest.fixture
def two_pg_urls() -> Iterator[tuple[str, str]]:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    names = [f"exmaild_bp_{uuid.uuid4().hex[:10]}" for _ in range(2)]
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


def _query(url: str, sql: str) -> list[tuple]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql))]
    finally:
        eng.dispose()


def _where(url: str) -> dict[str, int]:
    """Contents per location kind ("@db" or "segments")."""
    rows = _query(url, "SELECT segment = '@db', count(*) FROM contents GROUP BY 1")
    return {("@db" if k else "segments"): n for k, n in rows}


def _seg_files(data: Path) -> list[Path]:
    return sorted((data / "blobs").glob("*.seg"))


def _send_to(port: int, rcpts: list[str], raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("carol@remote.test", rcpts, raw)


def test_smtp_in_imap_and_pop3_out_with_contents_in_the_database(
        tmp_path: Path, pg_url: str) -> None:
    config, ports = setup(tmp_path, pg_url, blobs=PG)
    r = exmailctl(config, "user", "add", "eve@example.test", "--password", PASSWORD)
    assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        sent = [message(1, 3000), message(2, BIG), message(3, 70000)]
        for raw in sent[:2]:
            code, text = smtp_send(ports["smtp"], raw)
            assert code == 250, text
        # One message to two recipients: stored once.
        _send_to(ports["smtp"], [USER, "eve@example.test"], sent[2])

        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == 3
        assert all(delivered(got, raw) for got, raw in zip(fetched, sent, strict=True))
        popped = pop3_all(ports["pop3"])
        assert [hashlib.sha256(p).digest() for p in popped] == \
            [hashlib.sha256(f).digest() for f in fetched]

        assert _where(pg_url) == {"@db": 3}
        chunks = dict(_query(pg_url, "SELECT content_id, count(*) FROM blob_chunks "
                                     "GROUP BY content_id"))
        assert sorted(chunks.values()) == [1, 1, 13]
        assert _query(pg_url, "SELECT max(refcount) FROM contents") == [(2,)]
        assert _seg_files(tmp_path / "var") == []  # nothing went to a segment

        # Bob expunges everything: only eve's copy keeps its chunks.
        imap_delete(ports["imap"], keep_every=10)
        left = _query(pg_url, "SELECT c.id FROM contents c JOIN blob_chunks b "
                              "ON b.content_id = c.id GROUP BY c.id")
        assert len(left) == 1 and _query(pg_url, "SELECT count(*) FROM contents") == [(1,)]
    finally:
        d.stop()
    assert "Traceback" not in d.output()
    assert "new message contents in the database" in d.output()


def test_two_nodes_without_a_shared_blob_directory(tmp_path: Path, pg_url: str) -> None:
    # Each node has its own [paths] data (two_nodes puts each in its own home).
    a, b = two_nodes(tmp_path, pg_url, USER, PASSWORD, blobs=PG)
    try:
        sent = [message(10, 5000), message(11, BIG)]
        for raw in sent:
            code, text = smtp_send(a.ports["smtp"], raw)
            assert code == 250, text
        fetched = imap_fetch_all(b.ports["imap"])
        assert len(fetched) == 2
        assert all(delivered(got, raw) for got, raw in zip(fetched, sent, strict=True))
        assert pop3_all(b.ports["pop3"]) == fetched
        for node in ("node-a", "node-b"):
            assert _seg_files(tmp_path / node / "var") == []
    finally:
        for d in (a, b):
            d.stop()


class Sender(threading.Thread):
    """Sends mail over SMTP until stopped; `sent` holds every acknowledged one."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.sent, self.error = port, [], None
        self.stop_now = threading.Event()

    def run(self) -> None:
        try:
            n = 100
            while not self.stop_now.is_set():
                n += 1
                raw = message(n, 2000 + (n % 5) * 150000)
                code, text = smtp_send(self.port, raw)
                assert code == 250, text
                self.sent.append(raw)
        except Exception as e:  # reported by the test
            self.error = e


def _migrate_under_load(config: Path, port: int, to: str) -> list[bytes]:
    sender = Sender(port)
    sender.start()
    while len(sender.sent) < 3 and sender.is_alive():
        sender.join(0.05)
    r = exmailctl(config, "blobs", "migrate", "--to", to)
    sender.stop_now.set()
    sender.join(60)
    assert sender.error is None, sender.error
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "content(s), " in r.stdout and f"to {to}" in r.stdout, r.stdout
    return sender.sent


def test_migrate_both_ways_while_mail_arrives(tmp_path: Path, pg_url: str) -> None:
    config, ports = setup(tmp_path, pg_url, blobs={"segment_size": 1 << 20,
                                                   "backend": "segments"})
    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        sent = [message(i, 1000 + i * 40000) for i in range(8)]
        for raw in sent:
            assert smtp_send(ports["smtp"], raw)[0] == 250
        sent += _migrate_under_load(config, ports["smtp"], "postgresql")
        # The daemon (still on segments) reads both kinds of location.
        where = _where(pg_url)
        assert where["@db"] >= 8, where
        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == len(sent)
        assert all(delivered(got, raw) for got, raw in zip(fetched, sent, strict=True))
        r = exmailctl(config, "blobs", "migrate", "--to", "postgresql")
        assert r.returncode == 0 and "note: [blobs] backend is 'segments'" in r.stdout, r.stdout
    finally:
        d.stop()

    # The config switch, then everything back to segments while mail arrives.
    config, ports = write_config(tmp_path, pg_url, blobs=PG)
    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        assert _where(pg_url) == {"@db": len(sent)}  # all moved by the second run
        sent += _migrate_under_load(config, ports["smtp"], "segments")
        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == len(sent)
        assert all(delivered(got, raw) for got, raw in zip(fetched, sent, strict=True))
        assert pop3_all(ports["pop3"]) == fetched
        # What is stored hashes to its digest, wherever it is.
        digests = {dg for (dg,) in _query(pg_url, "SELECT digest FROM contents")}
        assert digests == {hashlib.sha256(f).hexdigest() for f in fetched}
    finally:
        d.stop()
    assert "Traceback" not in d.output()


def test_backup_and_restore_with_contents_in_the_database(
        tmp_path: Path, two_pg_urls: tuple[str, str]) -> None:
    src, dst = two_pg_urls
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Some contents in segments...
    config, ports = setup(tmp_path / "a", src, blobs={"backend": "segments"})
    d = Daemon(config, ports, tmp_path / "a")
    d.start()
    try:
        for n in range(3):
            assert smtp_send(ports["smtp"], message(n, 50000))[0] == 250
    finally:
        d.stop()
    config, ports = write_config(tmp_path / "a", src, blobs=PG)
    d = Daemon(config, ports, tmp_path / "a")
    d.start()
    try:
        for n in range(3, 6):  # ...and some in the database
            assert smtp_send(ports["smtp"], message(n, 300000))[0] == 250
        assert _where(src) == {"@db": 3, "segments": 3}
        dest = tmp_path / "backup"
        r = exmailctl(config, "backup", str(dest))
        assert r.returncode == 0, r.stderr
        before = snapshot(ports["imap"], USER, PASSWORD)
    finally:
        d.stop()
    manifest = json.loads((dest / "manifest.json").read_text())
    assert "@db" not in manifest["segments"]
    r = exmailctl(config, "backup", "verify", str(dest))
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout, r.stderr)

    config2, ports2 = write_config(tmp_path / "b", dst, blobs=PG)
    r = exmailctl(config2, "restore", str(dest))
    assert r.returncode == 0, r.stderr
    d = Daemon(config2, ports2, tmp_path / "b")
    d.start()
    try:
        after = snapshot(ports2["imap"], USER, PASSWORD)
    finally:
        d.stop()
    assert after["INBOX"].messages == before["INBOX"].messages
    assert len(after["INBOX"].messages) == 6

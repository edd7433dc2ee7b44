"""Two daemons on one PostgreSQL: what one of them changes reaches the other's
IDLE clients through LISTEN/NOTIFY (store/pgnotify.py) — a delivery, a flag
change, an expunge — and after the listening connection is cut the daemon
listens again and pushes the next change.

The daemons share the database and the blob directory, as nodes on a shared
volume do. The waits are generous bounds for a busy machine; without the
relay a delivery reached another node's IDLE client only at the two-minute
keepalive poll."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from .clusterutil import WAIT, Idler, two_nodes
from .conftest import PG_URL, _wipe_pg
from .daemon import REPO, Daemon, env, exmailctl, write_config

USER, PASSWORD = "ida@example.test", "Secret9Pass"


@pytest.fixture
def nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Daemon]]:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (LISTEN/NOTIFY is PostgreSQL's)")
    db_url = request.getfixturevalue("pg_database")
    _wipe_pg(db_url)
    daemons = two_nodes(tmp_path, db_url, USER, PASSWORD,
                        paths={"data": str(tmp_path / "shared")})
    yield daemons[0], daemons[1]
    for d in daemons:
        d.kill()


def _send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as s:
        s.sendmail("x@outside.test", [USER], f"Subject: {subject}\r\n\r\nhi\r\n".encode())


def test_changes_on_one_node_reach_idle_clients_on_the_other(
        nodes: tuple[Daemon, Daemon]) -> None:
    a, b = nodes
    idler = Idler(a.ports["imap"], USER, PASSWORD)
    _send(b.ports["smtp"], "one")
    assert idler.wait_for(b"EXISTS") == b"* 1 EXISTS"

    # A flag change made through node b shows as FETCH on node a.
    other = imaplib.IMAP4("127.0.0.1", b.ports["imap"])
    other.login(USER, PASSWORD)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Flagged)")
    assert b"\\Flagged" in idler.wait_for(b"FETCH")

    # An expunge through node b.
    _send(b.ports["smtp"], "two")
    assert idler.wait_for(b"EXISTS") == b"* 2 EXISTS"
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    assert idler.wait_for(b"EXPUNGE") == b"* 1 EXPUNGE"


def test_listener_reconnects_after_its_connection_is_cut(
        nodes: tuple[Daemon, Daemon], request: pytest.FixtureRequest) -> None:
    a, b = nodes
    eng = sa.create_engine(request.getfixturevalue("pg_database"))
    try:
        with eng.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'exmaild-notify-listen'"))
        again = "change notifications from other nodes: listening again"
        for node in (a, b):
            assert again in node.wait_for_log(again, timeout=WAIT)
    finally:
        eng.dispose()
    idler = Idler(a.ports["imap"], USER, PASSWORD)
    _send(b.ports["smtp"], "after the gap")
    assert idler.wait_for(b"EXISTS") == b"* 1 EXISTS"


def test_directory_change_reaches_a_daemon_at_once(tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """The poll is set to a minute: only the operation log's notification can
    make a member disabled by exmailctl refused at the next RCPT this soon."""
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (LISTEN/NOTIFY is PostgreSQL's)")
    db_url = request.getfixturevalue("pg_database")
    _wipe_pg(db_url)
    config, ports = write_config(tmp_path, db_url, log={"json_file": "-"},
                                 directory={"change_poll_interval": 60.0},
                                 smtp={"lookup_cache_ttl": 600.0})
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD, USER],
                   check=True, cwd=REPO, env=env(), timeout=60)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=60)
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=WAIT) as s:
            s.ehlo("client.test")
            s.mail("x@outside.test")
            assert s.rcpt(USER)[0] == 250  # now in the lookup cache
        r = exmailctl(config, "user", "disable", USER)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + WAIT
        code = 250
        while code == 250 and time.monotonic() < deadline:
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=WAIT) as s:
                s.ehlo("client.test")
                s.mail("x@outside.test")
                code = s.rcpt(USER)[0]
            time.sleep(0.1)
        assert code == 550
    finally:
        d.kill()

"""Hundreds of IMAP sessions logging in and selecting one mailbox at the same
moment (issues 12 and 17), through the real daemon and raw sockets.

Two faults left most of 500 such sessions waiting forever: the listeners'
listen(2) backlog was Twisted's 50, so the kernel completed handshakes it had
no room to queue (with SYN cookies the client believes it is connected and
waits for a greeting that never comes); and the sessions that did get in took
turns on the mailbox index's refresh lock, each hand-over running inside the
previous one until the recursion limit killed the holder with the lock held.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exmaild.connlimits import somaxconn

from .conftest import _wipe_pg
from .daemon import REPO, Daemon, env, write_config
from .imapcrowd import crowd

USER, PASSWORD = "crowd@example.test", "Crowd9Pass"
SESSIONS = 500
WAIT = 120.0  # a hang detector, not a speed limit (bench/imap_sessions.py measures)


def _daemon(tmp_path: Path, db_url: str, **limits: int) -> Daemon:
    config, ports = write_config(tmp_path, db_url, log={"json_file": "-"}, limits=limits)
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD, USER],
                   check=True, cwd=REPO, env=env(), timeout=120)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=60)
    return d


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    url = request.getfixturevalue("pg_database")
    _wipe_pg(url)
    yield url


def test_500_sessions_select_one_mailbox_at_once(tmp_path: Path, db_url: str) -> None:
    d = _daemon(tmp_path, db_url, max_connections_per_ip=10_000,
                max_preauth_connections=10_000)
    try:
        c = asyncio.run(crowd(d.ports["imap"], USER, PASSWORD, SESSIONS, WAIT))
        got = {step: len(v) for step, v in c.reached.items()}
        assert (c.stuck, dict(c.refused)) == (0, {}), got
        assert got["select"] == got["idle"] == SESSIONS
        assert "Traceback" not in d.output()
    finally:
        d.kill()


def test_sessions_over_the_address_cap_are_told_so(tmp_path: Path) -> None:
    # Sessions a connection limit keeps out hear so at once, none is left silent.
    somax = somaxconn() or 4096
    d = _daemon(tmp_path, "", max_connections_per_ip=100, listen_backlog=somax + 1)
    try:
        # A backlog the kernel will cut is named at start-up.
        assert (f"listen backlog {somax + 1} ([limits] listen_backlog) is cut to {somax}"
                in d.wait_for_log("is cut to")) or somaxconn() is None
        c = asyncio.run(crowd(d.ports["imap"], USER, PASSWORD, 300, WAIT))
        assert len(c.reached["idle"]) == 100 and c.stuck == 0
        assert dict(c.refused) == {
            "greeting: * BYE [UNAVAILABLE] Too many connections, try again later": 200}
    finally:
        d.kill()

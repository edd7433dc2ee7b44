"""Failover: two nodes on one PostgreSQL under SMTP load, with IDLE clients
and outbound mail that node A holds (its deliveries hang on a relay that
never answers) when A is killed with SIGKILL. Node B keeps accepting and
pushing to its IDLE client; once A's queue claims lapse ([queue]
claim_lease) B delivers them, and every acknowledged message is present
exactly once: in the mailbox for local mail, at the relay for outbound."""

from __future__ import annotations

import collections
import imaplib
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exmaild.store import model as m

from .clusterutil import WAIT, Idler, two_nodes
from .conftest import PG_URL, _wipe_pg, free_port
from .daemon import Daemon
from .queuelab import Sink

USER, PASSWORD = "fo@example.test", "Secret9Pass"


class Staller:
    """Accepts connections and never says a word: deliveries to it hang."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(100)
        self.conns: list[socket.socket] = []
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.accepted.set()

    def close(self) -> None:
        # close() alone leaves a thread blocked in accept() holding the socket,
        # which stays listening: it would take one more connection (a runner's
        # retry, which then hangs) and keep smtp-sink from binding the port.
        # shutdown() wakes accept() on Linux; only then is the port free.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        for c in self.conns:
            c.close()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict]:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (the cluster runs on PostgreSQL)")
    db_url = request.getfixturevalue("pg_database")
    _wipe_pg(db_url)
    relay_port = free_port()
    staller = Staller(relay_port)
    daemons = two_nodes(
        tmp_path, db_url, USER, PASSWORD, paths={"data": str(tmp_path / "shared")},
        queue={"relayhost": f"[127.0.0.1]:{relay_port}", "relayhost_tls": "none",
               "claim_lease": 5, "retry_schedule": [1], "scan_interval": 0.5})
    sink = Sink(tmp_path / "sink", relay_port)
    yield {"a": daemons[0], "b": daemons[1], "staller": staller, "sink": sink, "db": db_url}
    sink.stop()
    staller.close()
    for d in daemons:
        d.kill()


def _send(d: Daemon, i: int, acked: list[str], outbound: bool) -> None:
    """One message through node d; its subject is recorded only once acknowledged."""
    subject = f"{'out' if outbound else 'in'}-{i}-{d.ports['smtp']}"
    try:
        if outbound:
            with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=WAIT) as s:
                s.login(USER, PASSWORD)
                s.sendmail(USER, [f"r{i}@remote.test"],
                           f"From: {USER}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())
        else:
            with smtplib.SMTP("127.0.0.1", d.ports["smtp"], timeout=WAIT) as s:
                s.sendmail("x@outside.test", [USER], f"Subject: {subject}\r\n\r\nhi\r\n".encode())
    except (OSError, smtplib.SMTPException):
        return  # not acknowledged: no promise was made
    acked.append(subject)


def test_kill_one_node_under_load(cluster: dict) -> None:
    a, b, staller, sink = cluster["a"], cluster["b"], cluster["staller"], cluster["sink"]
    idle_a, idle_b = Idler(a.ports["imap"], USER, PASSWORD), Idler(b.ports["imap"], USER,
                                                                     PASSWORD)
    acked: list[str] = []
    for i in range(24):
        _send(a if i % 2 == 0 else b, i, acked, outbound=i % 3 == 0)
    # A holds outbound claims: its deliveries hang on the silent relay.
    assert staller.accepted.wait(WAIT)
    assert any(s.startswith("out-") and s.endswith(str(a.ports["smtp"])) for s in acked)
    # The claims A holds when it dies (its deliveries hang on the silent relay).
    eng = sa.create_engine(cluster["db"])
    held_by_a = 0
    deadline = time.monotonic() + WAIT
    while not held_by_a and time.monotonic() < deadline:
        with eng.connect() as c:
            held_by_a = c.execute(sa.select(sa.func.count()).select_from(m.queue_recipients)
                                  .where(m.queue_recipients.c.locked_by == "node-a")).scalar()
        time.sleep(0.1)
    eng.dispose()
    assert held_by_a > 0
    idle_a.sock.close()
    a.kill()

    # B keeps accepting, and its IDLE client still hears of new mail.
    before = len([s for s in acked if s.startswith("in-")])
    for i in range(24, 36):
        _send(a if i % 2 == 0 else b, i, acked, outbound=i % 3 == 0)  # A's refuse: not acked
    assert not any(s.endswith(str(a.ports["smtp"])) and int(s.split("-")[1]) >= 24
                   for s in acked)
    exists = idle_b.wait_for(b"EXISTS")
    assert int(exists.split()[1]) > 0
    assert len([s for s in acked if s.startswith("in-")]) > before

    # The relay comes back; B delivers its own and, after A's claims lapse, A's.
    staller.close()
    sink.start()
    want = collections.Counter(s for s in acked if s.startswith("out-"))
    deadline = time.monotonic() + 90
    got: collections.Counter[str] = collections.Counter()
    while time.monotonic() < deadline:
        got = collections.Counter(
            m.group(1) for d in sink.messages() for m in [re.search(r"Subject: (\S+)", d)] if m)
        if set(got) >= set(want):
            break
        time.sleep(0.5)
    time.sleep(3)  # a duplicate would arrive about now
    got = collections.Counter(
        m.group(1) for d in sink.messages() for m in [re.search(r"Subject: (\S+)", d)] if m)
    assert got == want, (got, want)

    # Every acknowledged local message is in the mailbox exactly once.
    imap = imaplib.IMAP4("127.0.0.1", b.ports["imap"])
    imap.login(USER, PASSWORD)
    imap.select("INBOX", readonly=True)
    typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    imap.logout()
    subjects = collections.Counter(
        part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple))
    assert subjects == collections.Counter(s for s in acked if s.startswith("in-"))

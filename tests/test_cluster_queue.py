"""Queue kicks across processes: two nodes on one PostgreSQL that scan the
queue only once an hour and retry only after an hour, and `exmailctl queue
retry|flush` (a process of its own, which reaches no daemon but through the
database) makes a runner deliver at once: the retry's transaction notifies
every node (store/pgnotify.py's queue channel). Nothing else in this setup
could send the mail within the hour, so the test waits for the delivery
itself, not for a time."""

from __future__ import annotations

import collections
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exmaild.store import model as m

from .clusterutil import WAIT, two_nodes
from .conftest import PG_URL, _wipe_pg, free_port
from .daemon import Daemon, exmailctl
from .queuelab import Sink

USER, PASSWORD = "kq@example.test", "Secret9Pass"


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict]:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (the cluster runs on PostgreSQL)")
    db_url = request.getfixturevalue("pg_database")
    _wipe_pg(db_url)
    relay_port = free_port()  # nothing listens yet: the first attempts are refused
    daemons = two_nodes(
        tmp_path, db_url, USER, PASSWORD, paths={"data": str(tmp_path / "shared")},
        queue={"relayhost": f"[127.0.0.1]:{relay_port}", "relayhost_tls": "none",
               "scan_interval": 3600.0, "retry_schedule": [3600]})
    sink = Sink(tmp_path / "sink", relay_port)
    yield {"a": daemons[0], "b": daemons[1], "sink": sink, "db": db_url}
    sink.stop()
    for d in daemons:
        d.kill()


def _submit(d: Daemon, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=WAIT) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, [rcpt], f"From: {USER}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())


def _recipients(db: str) -> dict[str, tuple[str, str, str | None]]:
    """recipient -> (queue id, status, locked_by)"""
    r, q = m.queue_recipients.c, m.queue_messages.c
    eng = sa.create_engine(db)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.select(r.recipient, q.queue_id, r.status, r.locked_by)
                             .join(m.queue_messages, q.id == r.message_id)).all()
    finally:
        eng.dispose()
    return {row.recipient: (row.queue_id, row.status, row.locked_by) for row in rows}


def _delivered(sink: Sink) -> collections.Counter[str]:
    return collections.Counter(
        m.group(1) for d in sink.messages() for m in [re.search(r"Subject: (\S+)", d)] if m)


def _wait_delivered(sink: Sink, subject: str) -> collections.Counter[str]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = _delivered(sink)
        if subject in got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{subject} was not delivered within {WAIT} s")


def test_exmailctl_retry_and_flush_wake_a_runner_at_once(cluster: dict) -> None:
    a, b, sink, db = cluster["a"], cluster["b"], cluster["sink"], cluster["db"]
    _submit(a, "one@remote.test", "first")
    _submit(b, "two@remote.test", "second")
    # Both tried at once (by whichever node claimed them) and refused: next try in an hour.
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        rows = _recipients(db)
        if len(rows) == 2 and all(s == "deferred" and not lk for _q, s, lk in rows.values()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not both deferred: {_recipients(db)}")
    sink.start()

    qid = _recipients(db)["one@remote.test"][0]
    r = exmailctl(a.config, "queue", "retry", qid)
    assert r.returncode == 0, r.stderr
    got = _wait_delivered(sink, "first")
    assert "second" not in got  # not asked for: it waits for its hour
    assert _recipients(db)["two@remote.test"][1] == "deferred"

    r = exmailctl(b.config, "queue", "flush")
    assert r.returncode == 0, r.stderr
    _wait_delivered(sink, "second")
    time.sleep(1)  # a second copy would be about now
    assert _delivered(sink) == collections.Counter({"first": 1, "second": 1})
    assert {s for _q, s, _lk in _recipients(db).values()} == {"sent"}
    for d in (a, b):
        assert "Traceback" not in d.output()

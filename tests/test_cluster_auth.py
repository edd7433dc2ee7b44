"""A password changed through one node holds on the other at once: node B
has just verified the old password (so its auth cache remembers it) when
node A's admin API, and then exmailctl, change it; B's very next IMAP,
POP3 and SMTP logins refuse the old password and take the new one. No
notification is needed for that: every login reads the account's stored
hash, and the cache is keyed by it (auth/checker.py)."""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clusterutil import WAIT, two_nodes
from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl

USER, OLD, NEW, NEWER = "pw@example.test", "Secret9Pass", "Other9Passw0rd", "Third9Passwd"


@pytest.fixture
def nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Daemon]]:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (the cluster runs on PostgreSQL)")
    db_url = request.getfixturevalue("pg_database")
    _wipe_pg(db_url)
    daemons = two_nodes(tmp_path, db_url, USER, OLD, paths={"data": str(tmp_path / "shared")})
    yield daemons[0], daemons[1]
    for d in daemons:
        d.kill()


def logins(d: Daemon, password: str) -> dict[str, bool]:
    """Whether IMAP LOGIN, POP3 USER/PASS and SMTP AUTH take `password` on `d`."""
    out = {}
    imap = imaplib.IMAP4("127.0.0.1", d.ports["imap"], timeout=WAIT)
    try:
        imap.login(USER, password)
        out["imap"] = True
        imap.logout()
    except imaplib.IMAP4.error:
        out["imap"] = False
        imap.shutdown()
    pop = poplib.POP3("127.0.0.1", d.ports["pop3"], timeout=WAIT)
    try:
        pop.user(USER)
        pop.pass_(password)
        out["pop3"] = True
    except poplib.error_proto:
        out["pop3"] = False
    pop.quit()
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=WAIT) as s:
        try:
            s.login(USER, password)
            out["smtp"] = True
        except smtplib.SMTPAuthenticationError:
            out["smtp"] = False
    return out


ALL = {"imap": True, "pop3": True, "smtp": True}
NONE = {"imap": False, "pop3": False, "smtp": False}


def test_password_change_on_one_node_holds_on_the_other_at_once(
        nodes: tuple[Daemon, Daemon]) -> None:
    a, b = nodes
    assert logins(b, OLD) == ALL  # now in b's auth cache
    token = exmailctl(a.config, "token", "create", "--name", "sync")
    assert token.returncode == 0, token.stderr
    req = urllib.request.Request(
        f"http://127.0.0.1:{a.ports['admin']}/api/v1/members/{USER}", method="PATCH",
        data=json.dumps({"password": NEW}).encode(),
        headers={"Authorization": f"Bearer {token.stdout.strip()}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        assert r.status == 200
    assert logins(b, OLD) == NONE
    assert logins(b, NEW) == ALL

    # The same through exmailctl, a process of its own, against b's cache again.
    r = exmailctl(a.config, "user", "passwd", USER, "--password-stdin", stdin=f"{NEWER}\n")
    assert r.returncode == 0, r.stderr
    assert logins(b, NEW) == NONE
    assert logins(b, NEWER) == ALL
    assert logins(a, NEWER) == ALL
    for d in (a, b):
        assert "Traceback" not in d.output()

"""Business mailboxes (manual §4.4.2.3, §5.2) end to end: managed with
exmailctl and the admin API, reached over IMAP in the shared namespace
(RFC 2342) by the members assigned to them, sent as through submission."""

from __future__ import annotations

import imaplib
import json
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config

PW = "Secret123x"
INBOX = "Shared/sales@acme.test/INBOX"


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def fails(config: Path, *args: str, message: str) -> None:
    r = exmailctl(config, *args)
    assert r.returncode != 0, (args, r.stdout)
    assert message in r.stderr, (args, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def api(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data,
                                 method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    return status, (json.loads(text) if text.strip() else None)


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the daemon did not see the change"
        time.sleep(0.2)


def login(port: int, who: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(who, PW)
    return imap


def listed(imap: imaplib.IMAP4, pattern: str = "*") -> list[str]:
    typ, data = imap.list('""', pattern)
    assert typ == "OK", data
    return [line.decode().rsplit(' "/" ', 1)[1].strip('"') for line in data if line]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("shared")
    db_url = ""
    if PG_URL:  # the daemon on PostgreSQL when the test database is configured
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url)
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    ok(config, "dept", "add", "Sales")
    ok(config, "dept", "add", "Sales/East")
    for who, dept in (("ann", None), ("bob", "Sales/East"), ("cy", None)):
        ok(config, "user", "add", f"{who}@acme.test", "--password-stdin",
           *(("--dept", dept) if dept else ()), stdin=f"{PW}\n")
    ok(config, "enterprise", "add", "Globex")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    ok(config, "user", "add", "gus@globex.test", "--password-stdin", stdin=f"{PW}\n")
    # The form scripts rely on; a department with its sub-departments too.
    ok(config, "shared", "add", "sales@acme.test", "--assign", "ann@acme.test")
    ok(config, "shared", "assign", "sales@acme.test", "--dept", "Sales")
    ok(config, "alias", "add", "orders@acme.test", "sales@acme.test")
    ok(config, "shared", "add", "gsales@globex.test", "--assign", "gus@globex.test")
    acme = ok(config, "token", "create", "--enterprise", "Acme").strip()
    globex = ok(config, "token", "create", "--enterprise", "Globex").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
        for n, rcpt in enumerate(("sales@acme.test", "orders@acme.test")):
            mx.sendmail("client@remote.test", [rcpt],
                        f"Subject: order {n}\r\nMessage-ID: <o{n}@remote.test>\r\n\r\n"
                        f"please ship {n}\r\n".encode())
    yield {"config": config, "ports": ports, "acme": acme, "globex": globex, "daemon": d}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def test_cli_show_and_rules(env: dict[str, Any]) -> None:
    config = env["config"]
    show = dict(line.split(": ", 1) for line in ok(config, "shared", "show", "sales@acme.test")
                .splitlines() if ": " in line)
    assert show["members"] == "ann@acme.test" and show["departments"] == "Sales"
    assert show["assigned"] == "ann@acme.test, bob@acme.test"  # bob through Sales/East
    assert show["aliases"] == "orders@acme.test" and show["status"] == "enabled"
    assert show["usage"].endswith("/1073741824 bytes, 2 messages")  # the default quota
    assert ok(config, "shared", "list", "--enterprise", "Acme").split("\t")[0] == \
        "sales@acme.test"
    fails(config, "shared", "add", "x@acme.test", "--assign", "gus@globex.test",
          message="unknown member gus@globex.test")
    fails(config, "shared", "assign", "sales@acme.test", "sales@acme.test",
          message="is not a member")
    fails(config, "shared", "show", "ann@acme.test", message="not a business mailbox")
    for n in range(4):
        ok(config, "alias", "add", f"sales{n}@acme.test", "sales@acme.test")
    fails(config, "alias", "add", "sales9@acme.test", "sales@acme.test", message="at most 5")
    for n in range(4):
        ok(config, "alias", "remove", f"sales{n}@acme.test")
    # Nobody logs in as the business mailbox itself, nor can it get a password.
    status, body = api(env["ports"]["admin"], "PATCH", "/members/sales@acme.test", env["acme"],
                       {"password": "Another123x"})
    assert status == 422 and "no password" in body["error"]["message"], body
    imap = imaplib.IMAP4("127.0.0.1", env["ports"]["imap"])
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("sales@acme.test", "")
    imap.logout()


def test_assigned_member_reads_and_writes_the_shared_inbox(env: dict[str, Any]) -> None:
    port = env["ports"]["imap"]
    imap = login(port, "ann@acme.test")
    typ, ns = imap.namespace()
    assert ns == [b'(("" "/")) NIL (("Shared/" "/"))'], ns
    names = listed(imap)
    assert INBOX in names and "Shared/sales@acme.test/Sent" in names
    assert "INBOX" in names  # her own still there
    assert not any("globex" in n for n in names)
    assert listed(imap, "Shared/%") == ["Shared/sales@acme.test"]
    typ, data = imap.status(f'"{INBOX}"', "(MESSAGES UNSEEN)")
    assert typ == "OK" and b"MESSAGES 2 UNSEEN 2" in data[0], data

    typ, data = imap.select(f'"{INBOX}"')
    assert (typ, data) == ("OK", [b"2"])
    typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [part[1] for part in data if isinstance(part, tuple)]
    assert subjects == [b"Subject: order 0\r\n\r\n", b"Subject: order 1\r\n\r\n"]
    assert imap.uid("STORE", "1", "+FLAGS", r"(\Seen)")[0] == "OK"
    # APPEND to it, with its own UIDs; the other member sees what was done.
    typ, data = imap.append(f'"{INBOX}"', None, None,
                            b"Subject: note\r\nMessage-ID: <note@acme.test>\r\n\r\nfiled\r\n")
    assert typ == "OK" and data[0].split()[2] == b"3]", data
    imap.logout()

    bob = login(port, "bob@acme.test")  # assigned through his department
    assert bob.select(f'"{INBOX}"') == ("OK", [b"3"])
    typ, data = bob.uid("FETCH", "1:*", "(FLAGS)")
    assert b"\\Seen" in data[0] and b"\\Seen" not in data[1], data
    assert bob.uid("STORE", "3", "+FLAGS", r"(\Deleted)")[0] == "OK"
    assert bob.expunge() == ("OK", [b"3"])
    assert bob.select("INBOX") == ("OK", [b"0"])  # his own INBOX is not the shared one
    bob.logout()


def test_unassigned_and_other_enterprise_see_nothing(env: dict[str, Any]) -> None:
    port = env["ports"]["imap"]
    for who, theirs in (("cy@acme.test", None), ("gus@globex.test", "gsales@globex.test")):
        imap = login(port, who)
        names = listed(imap)
        assert not any("sales@acme.test" in n for n in names), (who, names)
        if theirs:
            assert f"Shared/{theirs}/INBOX" in names
        for typ, data in (imap.select(f'"{INBOX}"'),
                          imap.status(f'"{INBOX}"', "(MESSAGES)"),
                          imap.append(f'"{INBOX}"', None, None, b"Subject: x\r\n\r\nx\r\n")):
            assert typ == "NO" and b"[NONEXISTENT]" in data[0], (who, data)
        imap.logout()
    # Creating, deleting or renaming in the shared namespace is refused.
    ann = login(port, "ann@acme.test")
    assert ann.create('"Shared/sales@acme.test/Mine"')[0] == "NO"
    assert ann.delete(f'"{INBOX}"')[0] == "NO"
    ann.logout()


def test_send_as_the_business_mailbox(env: dict[str, Any]) -> None:
    port = env["ports"]["submission"]

    def mail_from(who: str, sender: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as sub:
            sub.ehlo("client.test")
            sub.login(who, PW)
            return sub.mail(sender)

    for who in ("ann@acme.test", "bob@acme.test"):
        for sender in ("sales@acme.test", "orders@acme.test"):
            assert mail_from(who, sender)[0] == 250, (who, sender)
    for who in ("cy@acme.test", "gus@globex.test"):
        code, text = mail_from(who, "sales@acme.test")
        assert (code, text.split()[0]) == (553, b"5.7.1"), (who, text)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as sub:
        sub.ehlo("client.test")
        sub.login("ann@acme.test", PW)
        refused = sub.sendmail("sales@acme.test", ["cy@acme.test"],
                               b"From: Sales <sales@acme.test>\r\nSubject: from sales\r\n"
                               b"Message-ID: <fs@acme.test>\r\n\r\nhello\r\n")
        assert refused == {}


def test_api_and_recall(env: dict[str, Any]) -> None:
    port, acme, globex = env["ports"]["admin"], env["acme"], env["globex"]
    status, body = api(port, "POST", "/shared", acme,
                       {"address": "help@acme.test", "members": ["cy@acme.test"],
                        "quota_bytes": 5000})
    assert status == 201 and body["assigned"] == ["cy@acme.test"], body
    assert body["quota_bytes"] == 5000
    status, body = api(port, "GET", "/shared", acme)
    assert status == 200
    assert [s["address"] for s in body["items"]] == ["help@acme.test", "sales@acme.test"]
    # Another enterprise's token finds nothing of Acme's.
    assert api(port, "GET", "/shared/help@acme.test", globex)[0] == 404
    status, body = api(port, "GET", "/shared", globex)
    assert [s["address"] for s in body["items"]] == ["gsales@globex.test"]
    assert api(port, "POST", "/shared/help@acme.test/assign", globex,
               {"members": ["gus@globex.test"]})[0] == 404
    status, body = api(port, "POST", "/shared/help@acme.test/assign", acme,
                       {"departments": ["Sales"]})
    assert status == 200 and body["assigned"] == ["bob@acme.test", "cy@acme.test"], body
    status, body = api(port, "POST", "/shared/help@acme.test/unassign", acme,
                       {"members": ["cy@acme.test"]})
    assert status == 200 and body["assigned"] == ["bob@acme.test"], body
    assert api(port, "POST", "/shared", acme, {"address": "x@acme.test", "bogus": 1})[0] == 422
    assert api(port, "POST", "/shared", acme, {"address": "ann@acme.test"})[0] == 409

    # Disabled: its members lose it at once; mail to it is refused.
    status, body = api(port, "PATCH", "/shared/help@acme.test", acme, {"enabled": False})
    assert status == 200 and body["status"] == "disabled"
    bob = login(env["ports"]["imap"], "bob@acme.test")
    assert not any("help@acme.test" in n for n in listed(bob))
    assert api(port, "PATCH", "/shared/help@acme.test", acme, {"enabled": True})[0] == 200
    assert "Shared/help@acme.test/INBOX" in listed(bob)

    # Recall: to the recycle bin for 60 days (members 30), gone from IMAP.
    assert api(port, "DELETE", "/shared/help@acme.test", acme)[0] == 204
    assert not any("help@acme.test" in n for n in listed(bob))
    bob.logout()
    lines = ok(env["config"], "recycle", "list", "--enterprise", "Acme").splitlines()
    assert "help@acme.test\t60 days left" in lines
    with smtplib.SMTP("127.0.0.1", env["ports"]["smtp"], timeout=10) as mx:
        mx.ehlo("client.test")
        mx.mail("someone@remote.test")
        wait_until(lambda: mx.rcpt("help@acme.test")[0] == 550)
    ok(env["config"], "recycle", "restore", "help@acme.test")
    assert "status: enabled" in ok(env["config"], "shared", "show", "help@acme.test")

"""An enterprise's catch-all (邮件转移, manual §4.4.4.3), mail backup rules
(§4.4.6.1) and report spam over IMAP (§5.5.6) through the real daemon: real
SMTP (MX and authenticated submission) with smtplib, IMAP with imaplib, the
admin API over urllib and exmailctl, on SQLite and PostgreSQL."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, write_config
from .test_admin_api import API, PW, error_code, ok

ACME = "acme.test"
ANN, BOB, CID, DAN = (f"{n}@{ACME}" for n in ("ann", "bob", "cid", "dan"))
CATCH_UTF7 = "&kK5O9o9sefs-"  # 邮件转移 in modified UTF-7


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("entrules")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url, smtp={"lookup_cache_ttl": 1},
                                 directory={"change_poll_interval": 1})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", ACME)
    ok(config, "dept", "add", "Finance")
    ok(config, "dept", "add", "Finance/East")
    for who in (ANN, BOB, CID):
        ok(config, "user", "add", who, "--password-stdin", stdin=f"{PW}\n")
    ok(config, "user", "add", DAN, "--password-stdin", "--dept", "Finance/East",
       stdin=f"{PW}\n")
    for who in ("off@acme.test", "gone@acme.test"):
        ok(config, "user", "add", who, "--password-stdin", stdin=f"{PW}\n")
    ok(config, "user", "disable", "off@acme.test")
    ok(config, "user", "remove", "gone@acme.test")  # into the recycle bin
    ok(config, "group", "add", "team@acme.test", "--member", ANN)
    token = ok(config, "token", "create").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    api = API(ports["admin"])
    status, s = api.call("POST", "/api/v1/me/login", body={"address": CID, "password": PW})
    assert status == 200, s
    yield {"api": api, "token": token, "ports": ports, "config": config, "cid": s["token"]}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def rcpt(port: int, to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        return s.rcpt(to)


def send(port: int, to: list[str], subject: str, body: str = "Hello.",
         sender: str = "someone@remote.test", login: str | None = None) -> Any:
    msg = (f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.monotonic_ns()}@remote.test>\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        if login:
            s.login(login, PW)
        return s.sendmail(sender, to, msg)


def folder(port: int, user: str, name: str, what: str = "BODY.PEEK[HEADER]"
           ) -> list[bytes]:
    """The header sections (or `what`) of the messages in a folder ([] when none)."""
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as c:
        c.login(user, PW)
        typ, count = c.select(f'"{name}"', readonly=True)
        if typ != "OK" or count[0] == b"0":
            return []
        typ, data = c.fetch("1:*", f"({what})")
        assert typ == "OK"
        return [item[1] for item in data if isinstance(item, tuple)]


def subjects(port: int, user: str, name: str) -> list[str]:
    out = []
    for h in folder(port, user, name):
        got = re.search(rb"(?im)^subject: (.*)$", h)
        out.append(got.group(1).decode().strip() if got else "")
    return sorted(out)


def wait_for(fn: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.2)


def test_catchall_takes_unknown_addresses_only(env: dict[str, Any]) -> None:
    api, tok, ports, config = env["api"], env["token"], env["ports"], env["config"]
    mx = ports["smtp"]
    code, text = rcpt(mx, "nobody@acme.test")
    assert (code, text.split()[0]) == (550, b"5.1.1")
    assert error_code(api.call("PUT", "/api/v1/catchall/acme.test", tok,
                               {"address": "team@acme.test"})) == (422, "invalid")
    assert api.call("PUT", "/api/v1/catchall/acme.test", tok,
                    {"address": "someone@elsewhere.test"})[0] == 404
    status, got = api.call("PUT", "/api/v1/catchall/acme.test", tok, {"address": CID})
    assert status == 200 and got == {"domain": ACME, "address": CID, "folder": "邮件转移"}
    assert api.call("GET", "/api/v1/catchall", tok)[1] == {"items": [got]}

    assert rcpt(mx, "nobody@acme.test")[0] == 250
    # A disabled member, an address in the recycle bin and a group keep their answers.
    code, text = rcpt(mx, "off@acme.test")
    assert (code, text.split()[0]) == (550, b"5.2.1")
    code, text = rcpt(mx, "gone@acme.test")
    assert (code, text.split()[0]) == (550, b"5.1.1")
    assert rcpt(mx, "someone@other-domain.test")[0] >= 500  # still no relay

    # Two unknown addresses and a member in one transaction: the member's copy
    # in her INBOX, one copy in cid's 邮件转移 naming both addresses.
    assert send(mx, ["nobody@acme.test", "Wrong.Name@acme.test", ANN], "for a leaver") == {}
    caught = wait_for(lambda: folder(ports["imap"], CID, CATCH_UTF7))
    assert len(caught) == 1
    assert b"X-Original-To: nobody@acme.test\r\n" in caught[0]
    assert b"X-Original-To: Wrong.Name@acme.test\r\n" in caught[0]
    assert subjects(ports["imap"], CID, "INBOX") == []
    ann = wait_for(lambda: folder(ports["imap"], ANN, "INBOX"))
    assert [b"for a leaver" in h for h in ann] == [True]
    with imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30) as c:
        c.login(CID, PW)
        typ, listed = c.list()
        assert any(CATCH_UTF7.encode() in line for line in listed), listed

    # Through exmailctl: off (an operation-log entry), and refused again.
    ok(config, "filter", "catchall", ACME, "off")
    assert ok(config, "filter", "catchall-list") == ""
    wait_for(lambda: rcpt(mx, "nobody@acme.test")[0] == 550)
    assert rcpt(mx, "nobody@acme.test")[0] == 550
    ok(config, "filter", "catchall", ACME, CID)
    assert ok(config, "filter", "catchall-list").splitlines() == [f"{ACME}\t{CID}"]
    log = ok(config, "log", "list", "--action", "catchall")
    assert "catchall.set" in log and "catchall.off" in log
    assert api.call("DELETE", "/api/v1/catchall/acme.test", tok)[0] == 204
    assert api.call("DELETE", "/api/v1/catchall/acme.test", tok)[0] == 404
    assert rcpt(mx, "nobody@acme.test")[0] == 550


def test_backup_rules_received_and_sent(env: dict[str, Any]) -> None:
    api, tok, ports, config = env["api"], env["token"], env["ports"], env["config"]
    mx, imap = ports["smtp"], ports["imap"]
    status, rule = api.call("POST", "/api/v1/backup-rules", tok, {
        "sources": [ANN, "dept:Finance"], "direction": "both",
        "keywords": ["财务", "report"], "destination": BOB, "folder": "Backup/Finance"})
    assert status == 201, rule
    assert rule["sources"] == [ANN, "dept:Finance"] and rule["keywords"] == ["财务", "report"]
    assert api.call("POST", "/api/v1/backup-rules", tok, {
        "sources": ["team@acme.test"], "destination": BOB, "folder": "X"})[0] == 422
    out = ok(config, "filter", "backup-add", "--source", CID, "--direction", "received",
             BOB, "From Cid")
    cid_rule = int(out.split()[2])

    # Received by ann (directly and through a group) and dan (Finance/East).
    send(mx, [ANN], "财务 monthly", "Here is the report.")
    send(mx, [ANN], "财务 monthly without the other keyword", "Nothing.")
    send(mx, ["team@acme.test"], "group: the REPORT of 财务")
    send(mx, [DAN], "report for east", "财务 figures")
    want = ["group: the REPORT of 财务", "report for east", "财务 monthly"]
    assert wait_for(lambda: subjects(imap, BOB, "Backup/Finance") == want), \
        subjects(imap, BOB, "Backup/Finance")
    # Sent: ann submits (authenticated) to cid; cid's rule copies received mail only.
    send(ports["submission"], [CID], "sent 财务 report", sender=ANN, login=ANN)
    send(ports["submission"], [ANN], "cid writes", sender=CID, login=CID)
    want = sorted([*want, "sent 财务 report"])
    assert wait_for(lambda: subjects(imap, BOB, "Backup/Finance") == want), \
        subjects(imap, BOB, "Backup/Finance")
    assert wait_for(lambda: subjects(imap, BOB, "From Cid") == ["sent 财务 report"]), \
        subjects(imap, BOB, "From Cid")
    assert subjects(imap, BOB, "INBOX") == []  # bob gets copies only in the folders

    listed = ok(config, "filter", "backup-list").splitlines()
    assert listed == [f"{rule['id']}\t{ANN};dept:Finance\tboth\t财务;report\t{BOB}\t"
                      "Backup/Finance", f"{cid_rule}\t{CID}\treceived\t\t{BOB}\tFrom Cid"]
    log = ok(config, "log", "list", "--action", "backup")
    assert log.count("backup.add") == 2
    ok(config, "filter", "backup-remove", str(cid_rule))
    assert api.call("DELETE", f"/api/v1/backup-rules/{rule['id']}", tok)[0] == 204
    assert api.call("GET", "/api/v1/backup-rules", tok)[1] == {"items": []}
    time.sleep(1.5)  # past lookup_cache_ttl for the exmailctl removal
    send(mx, [ANN], "财务 report after the rules")
    send(mx, [CID], "to cid after the rules")
    assert wait_for(lambda: "to cid after the rules" in subjects(imap, CID, "INBOX"))
    assert len(subjects(imap, BOB, "Backup/Finance")) == 4
    assert subjects(imap, BOB, "From Cid") == ["sent 财务 report"]


def _uid_of(c: imaplib.IMAP4, subject: str) -> bytes:
    typ, data = c.uid("SEARCH", "SUBJECT", f'"{subject}"')
    assert typ == "OK" and data[0], (subject, data)
    return data[0].split()[-1]


def block_list(config: Any) -> list[str]:
    return ok(config, "filter", "list", CID).splitlines()


def test_report_spam_and_not_spam_over_imap(env: dict[str, Any]) -> None:
    api, ports, config = env["api"], env["ports"], env["config"]
    mx, imap = ports["smtp"], ports["imap"]
    send(mx, [CID], "cheap pills", sender="Pill Seller <seller@spam.test>")
    send(mx, [CID], "second offer", sender="x@bulk.test")
    assert wait_for(lambda: len(subjects(imap, CID, "INBOX")) >= 2)
    with imaplib.IMAP4("127.0.0.1", imap, timeout=30) as c:
        c.login(CID, PW)
        c.select("INBOX")
        # MOVE into Junk reports: the sender is blocked (to Junk).
        assert c.uid("MOVE", _uid_of(c, "cheap pills"), "Junk")[0] == "OK"
        assert block_list(config) == ["block\tseller@spam.test\tjunk"]
        # COPY + expunge works the same way.
        uid = _uid_of(c, "second offer")
        assert c.uid("COPY", uid, "Junk")[0] == "OK"
        c.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
        c.expunge()
    assert block_list(config) == ["block\tseller@spam.test\tjunk", "block\tx@bulk.test\tjunk"]
    send(mx, [CID], "more pills", sender="seller@spam.test")
    assert wait_for(lambda: "more pills" in subjects(imap, CID, "Junk"))

    # Out of Junk (not to Deleted): not spam, the block entry goes.
    ok(config, "filter", "add", CID, "block", "bulk.test")
    with imaplib.IMAP4("127.0.0.1", imap, timeout=30) as c:
        c.login(CID, PW)
        c.select("Junk")
        assert c.uid("MOVE", _uid_of(c, "cheap pills"), "INBOX")[0] == "OK"
        assert c.uid("MOVE", _uid_of(c, "more pills"), "Deleted")[0] == "OK"
        # A domain entry still blocks x@bulk.test: the address is allowed.
        assert c.uid("MOVE", _uid_of(c, "second offer"), "INBOX")[0] == "OK"
    assert block_list(config) == ["allow\tx@bulk.test", "block\tbulk.test\tjunk"]
    send(mx, [CID], "bulk but wanted", sender="x@bulk.test")
    assert wait_for(lambda: "bulk but wanted" in subjects(imap, CID, "INBOX"))

    # An administrator sees and changes the same lists.
    tok = env["token"]
    assert api.call("GET", f"/api/v1/members/{CID}/filters", tok)[1] == {"items": [
        {"list": "allow", "pattern": "x@bulk.test", "action": "junk"},
        {"list": "block", "pattern": "bulk.test", "action": "junk"}]}
    assert api.call("POST", f"/api/v1/members/{CID}/filters", tok,
                    {"list": "block", "pattern": "Evil.test", "action": "refuse"})[0] == 201
    assert "block\tevil.test\trefuse" in block_list(config)
    assert api.call("DELETE", f"/api/v1/members/{CID}/filters/block/evil.test", tok)[0] == 204
    assert api.call("DELETE", f"/api/v1/members/{CID}/filters/block/evil.test", tok)[0] == 404
    assert api.call("GET", f"/api/v1/members/{CID}/filters", env["cid"])[0] == 403

    # The member's setting off: moving to Junk changes no list.
    status, got = api.call("PATCH", "/api/v1/me/settings", env["cid"],
                           {"report_spam_blocks": False})
    assert status == 200 and got["report_spam_blocks"] is False
    with imaplib.IMAP4("127.0.0.1", imap, timeout=30) as c:
        c.login(CID, PW)
        c.select("INBOX")
        assert c.uid("MOVE", _uid_of(c, "bulk but wanted"), "Junk")[0] == "OK"
    assert block_list(config) == ["allow\tx@bulk.test", "block\tbulk.test\tjunk"]


def test_sieve_scripts_import_and_export_as_files(env: dict[str, Any],
                                                  tmp_path: Any) -> None:
    config = env["config"]
    script = 'require ["fileinto"];\r\n# 收信规则\r\nif header :is "subject" "x" {\r\n' \
             '  fileinto "X";\r\n}\r\n'
    src = tmp_path / "in.sieve"
    src.write_bytes(script.encode())
    ok(config, "sieve", "put", ANN, "imported", str(src))
    dst = tmp_path / "out.sieve"
    ok(config, "sieve", "get", ANN, "imported", "--output", str(dst))
    assert dst.read_bytes() == script.encode()
    shown = ok(config, "sieve", "get", ANN, "imported")
    assert shown.replace("\r\n", "\n") == script.replace("\r\n", "\n")

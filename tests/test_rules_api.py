"""The rule engine's API faces (issue #13) through the real daemon: /me/sieve,
/me/rules, /me/vacation, /me/filters and the admin's /members/{address}/sieve
over urllib; each edit checked over ManageSieve (raw RFC 5804 session) and by
real SMTP delivery read back over IMAP (imaplib)."""

from __future__ import annotations

import base64
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
from .test_managesieve import Raw

ANN, BOB = "ann@acme.test", "bob@acme.test"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rulesapi")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url)
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    for who in (ANN, BOB, "cid@acme.test"):
        ok(config, "user", "add", who, "--password-stdin", stdin=f"{PW}\n")
    acme = ok(config, "token", "create").strip()
    ok(config, "enterprise", "add", "Globex")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    globex = ok(config, "token", "create", "--enterprise", "Globex").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    api = API(ports["admin"])
    tokens = {}
    for who in (ANN, BOB, "cid@acme.test"):
        status, s = api.call("POST", "/api/v1/me/login", body={"address": who, "password": PW})
        assert status == 200, s
        tokens[who] = s["token"]
    yield {"api": api, "acme": acme, "globex": globex, "ports": ports, "me": tokens,
           "config": config}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def sieve_session(port: int, user: str) -> Raw:
    c = Raw(port)
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + PW.encode()).decode()
    assert c.cmd(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())[-1].startswith(b"OK")
    return c


def getscript(port: int, user: str, name: str) -> str:
    c = sieve_session(port, user)
    try:
        lines = c.cmd(f'GETSCRIPT "{name}"\r\n'.encode())
    finally:
        c.close()
    assert lines[-1].startswith(b"OK"), lines
    head, _, text = b"".join(lines[:-1]).partition(b"\r\n")  # the literal's {N}
    assert re.fullmatch(rb"\{\d+\}", head), lines
    return text[:int(head[1:-1])].decode()


def putscript(port: int, user: str, name: str, text: str) -> list[bytes]:
    c = sieve_session(port, user)
    try:
        data = text.encode()
        return c.cmd(f'PUTSCRIPT "{name}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
    finally:
        c.close()


def send(port: int, rcpt: str, subject: str, sender: str = "someone@remote.test",
         extra: str = "") -> None:
    msg = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.monotonic_ns()}@remote.test>\r\n{extra}\r\nHello.\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(sender, [rcpt], msg.encode())


def flags_by_subject(port: int, user: str, folder: str = "INBOX") -> dict[str, str]:
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login(user, PW)
        typ, count = imap.select(f'"{folder}"', readonly=True)
        assert typ == "OK", folder
        if count[0] == b"0":
            return {}
        typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                subj = item[1].decode().split(":", 1)[1].strip()
                out[subj] = flags.group(1).decode() if flags else ""
        return out
    finally:
        imap.logout()


def wait_for(fn: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.2)


SCRIPT = ('require ["imap4flags"];\r\nif header :contains "subject" "urgent" {\r\n'
          '  addflag "\\\\Flagged";\r\n}\r\n')


def test_sieve_scripts_through_the_api_and_managesieve(env: dict[str, Any]) -> None:
    api, tok, ports = env["api"], env["me"][ANN], env["ports"]
    bad = 'require "fileinto";\r\nif true {\r\n  fileinto "x"\r\n}\r\n'
    status, err = api.call("PUT", "/api/v1/me/sieve/main", tok, {"script": bad})
    assert (status, err["error"]["code"]) == (422, "invalid")
    assert "line 4" in err["error"]["message"], err
    assert error_code(api.call("GET", "/api/v1/me/sieve/main", tok)) == (404, "not_found")

    status, got = api.call("PUT", "/api/v1/me/sieve/main", tok,
                           {"script": SCRIPT, "activate": True})
    assert status == 200 and got == {"name": "main", "active": True, "script": SCRIPT}
    # The API's edit is what ManageSieve shows...
    assert SCRIPT in getscript(ports["managesieve"], ANN, "main")
    send(ports["smtp"], ANN, "urgent: api script")
    assert "\\Flagged" in wait_for(lambda: flags_by_subject(ports["imap"], ANN)).get(
        "urgent: api script", ""), flags_by_subject(ports["imap"], ANN)

    # ...and a ManageSieve edit is what the API (member and admin) shows.
    edited = SCRIPT.replace("urgent", "asap")
    assert putscript(ports["managesieve"], ANN, "main", edited)[-1].startswith(b"OK")
    assert api.call("GET", "/api/v1/me/sieve/main", tok)[1]["script"] == edited
    status, listed = api.call("GET", "/api/v1/members/ann@acme.test/sieve", env["acme"])
    assert status == 200 and listed["items"] == [
        {"name": "main", "active": True, "size": len(edited)}]
    assert api.call("GET", "/api/v1/members/ann@acme.test/sieve/main",
                    env["acme"])[1]["script"] == edited

    # The admin stores a script for a member; the same checks as PUTSCRIPT.
    status, err = api.call("PUT", "/api/v1/members/ann@acme.test/sieve/spare", env["acme"],
                           {"script": "keep"})
    assert status == 422 and "line 1" in err["error"]["message"]
    status, got = api.call("PUT", "/api/v1/members/ann@acme.test/sieve/spare", env["acme"],
                           {"script": "keep;\r\n"})
    assert status == 200 and got["active"] is False
    c = sieve_session(ports["managesieve"], ANN)
    try:
        listing = b"".join(c.cmd(b"LISTSCRIPTS\r\n"))
    finally:
        c.close()
    assert b'"main" ACTIVE' in listing and b'"spare"' in listing

    # Another enterprise's admin, and a member's token, reach nothing of it.
    assert api.call("GET", "/api/v1/members/ann@acme.test/sieve", env["globex"])[0] == 404
    assert api.call("GET", "/api/v1/members/ann@acme.test/sieve", tok)[0] == 403
    assert api.call("GET", "/api/v1/me/sieve", env["acme"])[0] == 403
    assert api.call("GET", "/api/v1/me/sieve/main", env["me"][BOB])[0] == 404

    assert error_code(api.call("DELETE", "/api/v1/me/sieve/main", tok)) == (409, "conflict")
    assert api.call("POST", "/api/v1/me/sieve/deactivate", tok)[0] == 200
    assert api.call("DELETE", "/api/v1/me/sieve/main", tok)[0] == 204
    status, listed = api.call("GET", "/api/v1/me/sieve", tok)
    assert [s["name"] for s in listed["items"]] == ["spare"]
    assert api.call("POST", "/api/v1/me/sieve/nosuch/activate", tok)[0] == 404


RULE = {"name": "Invoices", "match": "all",
        "conditions": [{"field": "subject", "op": "contains", "value": "invoice"}],
        "actions": [{"type": "tag", "value": "invoices"}, {"type": "mark_read"}]}


def test_rules_vacation_and_run_on_a_folder(env: dict[str, Any]) -> None:
    api, tok, ports = env["api"], env["me"][BOB], env["ports"]
    assert error_code(api.call("POST", "/api/v1/me/rules", tok, {
        "conditions": [{"field": "size", "op": "contains", "value": "x"}],
        "actions": [{"type": "delete"}]})) == (422, "invalid")
    status, rule = api.call("POST", "/api/v1/me/rules", tok, RULE)
    assert status == 201 and rule["number"] == 1 and rule["custom"] is False
    assert '"invoices"' in getscript(ports["managesieve"], BOB, "exmail-rules")
    send(ports["smtp"], BOB, "invoice 1")
    got = wait_for(lambda: flags_by_subject(ports["imap"], BOB))
    assert "\\Seen" in got["invoice 1"] and "invoices" in got["invoice 1"], got

    # Off: new mail is left alone; "run on a folder" applies it afterwards.
    status, rule = api.call("PATCH", "/api/v1/me/rules/1", tok, {"enabled": False})
    assert status == 200 and rule["enabled"] is False
    send(ports["smtp"], BOB, "invoice 2")
    got = wait_for(lambda: "invoice 2" in (f := flags_by_subject(ports["imap"], BOB)) and f)
    assert "invoices" not in got["invoice 2"], got
    status, done = api.call("POST", "/api/v1/me/rules/1/run", tok, {"folder": "INBOX"})
    assert status == 200 and done["examined"] == 2 and done["matched"] == 2, done
    assert "invoices" in flags_by_subject(ports["imap"], BOB)["invoice 2"]
    assert api.call("POST", "/api/v1/me/rules/1/run", tok, {"folder": "Nope"})[0] == 404
    assert api.call("POST", "/api/v1/me/rules/9/run", tok, {"folder": "INBOX"})[0] == 404

    # The auto-reply lives in the same script, ahead of the rules.
    status, vac = api.call("PUT", "/api/v1/me/vacation", tok,
                           {"text": "Away until Monday.", "subject": "Away", "days": 3})
    assert status == 200 and vac["enabled"] is True and vac["custom"] is False
    assert [r["name"] for r in api.call("GET", "/api/v1/me/rules", tok)[1]["items"]] == [
        "Invoices"]
    text = getscript(ports["managesieve"], BOB, "exmail-rules")
    assert 'vacation :days 3 :subject "Away" "Away until Monday.";' in text
    for n in (1, 2):  # one reply per sender per period
        send(ports["smtp"], BOB, f"hello {n}", sender=ANN)
    replies = wait_for(lambda: [s for s in flags_by_subject(ports["imap"], ANN) if s == "Away"])
    assert replies == ["Away"]
    send(ports["smtp"], BOB, "list mail", sender="cid@acme.test", extra="List-Id: <l.x>\r\n")
    wait_for(lambda: "list mail" in flags_by_subject(ports["imap"], BOB))
    assert "Away" not in flags_by_subject(ports["imap"], "cid@acme.test")

    # A hand edit over ManageSieve shows as custom and the structured face
    # refuses to overwrite it.
    edited = text.replace('addflag "invoices";', 'addflag "bills";')
    assert putscript(ports["managesieve"], BOB, "exmail-rules", edited)[-1].startswith(b"OK")
    status, listed = api.call("GET", "/api/v1/me/rules", tok)
    assert listed["items"][0]["custom"] is True
    assert error_code(api.call("PATCH", "/api/v1/me/rules/1", tok, {"enabled": True})) == (
        409, "conflict")
    status, rule = api.call("PUT", "/api/v1/me/rules/1", tok, {**RULE, "stop": True})
    assert status == 200 and rule["custom"] is False and rule["stop"] is True
    assert api.call("DELETE", "/api/v1/me/vacation", tok)[0] == 204
    assert api.call("GET", "/api/v1/me/vacation", tok)[1] == {"enabled": False,
                                                              "custom": False}
    assert api.call("DELETE", "/api/v1/me/rules/1", tok)[0] == 204
    assert api.call("GET", "/api/v1/me/rules", tok)[1]["items"] == []
    assert "vacation :days" not in getscript(ports["managesieve"], BOB, "exmail-rules")


def test_sender_lists_through_the_api(env: dict[str, Any]) -> None:
    api, tok, ports = env["api"], env["me"]["cid@acme.test"], env["ports"]
    assert error_code(api.call("POST", "/api/v1/me/filters", tok, {
        "list": "block", "pattern": "not a domain"})) == (422, "invalid")
    status, got = api.call("POST", "/api/v1/me/filters", tok,
                           {"list": "block", "pattern": "@Spam.test"})
    assert status == 201 and got == {"list": "block", "pattern": "spam.test", "action": "junk"}
    assert api.call("GET", "/api/v1/me/filters", tok)[1]["items"] == [got]
    send(ports["smtp"], "cid@acme.test", "cheap pills", sender="x@spam.test")
    assert "cheap pills" in wait_for(lambda: flags_by_subject(ports["imap"], "cid@acme.test",
                                                              "Junk"))
    assert api.call("DELETE", "/api/v1/me/filters/block/spam.test", tok)[0] == 204
    assert api.call("DELETE", "/api/v1/me/filters/block/spam.test", tok)[0] == 404
    send(ports["smtp"], "cid@acme.test", "real offer", sender="y@spam.test")
    assert "real offer" in wait_for(lambda: flags_by_subject(ports["imap"], "cid@acme.test"))


def test_enterprise_filters_run_before_members_rules(env: dict[str, Any]) -> None:
    api, tok, ports, cid = env["api"], env["acme"], env["ports"], "cid@acme.test"
    me = env["me"][cid]
    assert error_code(api.call("POST", "/api/v1/filters", tok, {
        "kind": "block", "pattern": "no domain"})) == (422, "invalid")
    status, got = api.call("POST", "/api/v1/filters", tok,
                           {"kind": "block", "pattern": "spam2.test", "action": "refuse"})
    assert status == 201 and got == {"kind": "block", "pattern": "spam2.test",
                                     "action": "refuse"}
    assert api.call("POST", "/api/v1/filters", tok,
                    {"kind": "subject", "pattern": "LOTTERY"})[0] == 201
    assert api.call("POST", "/api/v1/filters", tok,
                    {"kind": "allow", "pattern": "good.test"})[0] == 201
    # The member's own allow entry does not outrank the enterprise's block.
    assert api.call("POST", "/api/v1/me/filters", me,
                    {"list": "allow", "pattern": "spam2.test"})[0] == 201
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(ports["smtp"], cid, "buy now", sender="x@spam2.test")
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error

    send(ports["smtp"], cid, "Your Lottery win", sender="someone@remote.test")
    assert "Your Lottery win" in wait_for(lambda: flags_by_subject(ports["imap"], cid, "Junk"))
    send(ports["smtp"], cid, "lottery club minutes", sender="boss@good.test")
    assert "lottery club minutes" in wait_for(lambda: flags_by_subject(ports["imap"], cid))
    assert "lottery club minutes" not in flags_by_subject(ports["imap"], cid, "Junk")

    # exmailctl sees (and changes) the same filters; each enterprise its own.
    listed = ok(env["config"], "filter", "enterprise-list", "--enterprise", "Acme")
    assert listed.splitlines() == ["allow\tgood.test\tjunk", "block\tspam2.test\trefuse",
                                   "subject\tlottery\tjunk"]
    assert api.call("GET", "/api/v1/filters", env["globex"])[1] == {"items": []}
    assert api.call("GET", "/api/v1/filters", me)[0] == 403
    ok(env["config"], "filter", "enterprise-remove", "subject", "lottery", "--enterprise", "Acme")
    for kind, pattern in (("block", "spam2.test"), ("allow", "good.test")):
        assert api.call("DELETE", f"/api/v1/filters/{kind}/{pattern}", tok)[0] == 204
    assert api.call("DELETE", "/api/v1/filters/block/spam2.test", tok)[0] == 404
    assert api.call("GET", "/api/v1/filters", tok)[1] == {"items": []}
    send(ports["smtp"], cid, "buy later", sender="x@spam2.test")
    assert "buy later" in wait_for(lambda: flags_by_subject(ports["imap"], cid))

"""The mail log (docs/mail-log.md) end to end: mail through smtplib into the
real daemon, a remote peer that accepts one recipient and refuses another,
then the rows through /cgi-bin/log/*, /api/v1/maillog, /api/v1/me/maillog and
`exmailctl log mail` (the retention sweep: tests/test_maintenance.py)."""

from __future__ import annotations

import csv
import datetime as dt
import http.client
import imaplib
import io
import json
import smtplib
import socketserver
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config

PW = "Secret123x"
TODAY = dt.datetime.now(dt.UTC).date()
# log/* dates are days in [exmail_api] timezone; a range around today covers
# "now" in any zone.
BEGIN = (TODAY - dt.timedelta(days=1)).isoformat()
END = (TODAY + dt.timedelta(days=1)).isoformat()


class _Peer(socketserver.StreamRequestHandler):
    """A remote MTA: accepts every recipient but bad@..., which it refuses."""

    def handle(self) -> None:
        self.wfile.write(b"220 peer.test ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                self.wfile.write(b"250 2.0.0 queued as PEER1\r\n")
            elif verb == b"RCPT" and b"<bad@" in line.lower():
                self.wfile.write(b"550 5.1.1 <bad@remote.test>: no such user\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def ctl(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def cgi(env: dict[str, Any], ent: str, path: str, body: Any = None) -> dict[str, Any]:
    """Exmail's API as its documentation has it: gettoken, then POST JSON."""
    port = env["ports"]["admin"]
    corp, secret = env["secrets"][ent]
    q = urllib.parse.urlencode({"corpid": corp, "corpsecret": secret})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/cgi-bin/gettoken?{q}",
                                timeout=30) as r:
        token = json.loads(r.read())["access_token"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/cgi-bin/{path}?access_token={token}",
        data=json.dumps(body or {}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def api(env: dict[str, Any], path: str, token: str, method: str = "GET",
        body: Any = None) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", env["ports"]["admin"], timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, "/api/v1" + path, body=json.dumps(body) if body is not None else None,
              headers=headers)
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, (json.loads(text) if text.strip() else None)


def wait_for(what: str, fn: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("maillog")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    peer = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Peer)
    peer.daemon_threads = True
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    config, ports = write_config(tmp, db_url, queue={
        "relayhost": f"[127.0.0.1]:{peer.server_address[1]}", "relayhost_tls": "none"})
    ctl(config, "enterprise", "add", "Acme")
    ctl(config, "domain", "add", "acme.test", "--enterprise", "Acme")
    ctl(config, "enterprise", "add", "Globex")
    ctl(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    for who in ("ann@acme.test", "bob@acme.test", "gus@globex.test"):
        ctl(config, "user", "add", who, "--password-stdin", stdin=f"{PW}\n")
    ctl(config, "alias", "add", "sales@acme.test", "bob@acme.test")
    # bob blocks a sender: its mail goes to his Junk (docs/sieve.md).
    ctl(config, "filter", "add", "bob@acme.test", "block", "pest@example.org")
    # A batch job for log/batchjob: a CSV import of members.
    (tmp / "members.csv").write_text("address,name\ncsv1@acme.test,Csv One\n")
    ctl(config, "user", "import", str(tmp / "members.csv"), "--enterprise", "Acme")
    secrets = {}
    for ent in ("Acme", "Globex"):
        line = ctl(config, "exmail-api", "secret", "create", "--enterprise", ent,
                   "--purpose", "logs")
        corp, _, sec = line.strip().partition(" ")
        secrets[ent] = (corp.removeprefix("corpid="), sec.removeprefix("secret="))
    token = ctl(config, "token", "create", "--enterprise", "Acme").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    e = {"config": config, "ports": ports, "secrets": secrets, "token": token}
    # ann sends (submission) to bob, to a remote address the peer takes and
    # to one it refuses; an outsider writes to bob's alias.
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        s.login("ann@acme.test", PW)
        s.sendmail("ann@acme.test", ["bob@acme.test", "ok@remote.test", "bad@remote.test"],
                   "From: ann@acme.test\r\nTo: bob@acme.test\r\n"
                   "Subject: =?utf-8?q?Quarterly_r=C3=A9port?=\r\n\r\nnumbers\r\n")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        s.sendmail("someone@example.org", ["sales@acme.test"],
                   "From: someone@example.org\r\nSubject: Offer\r\n\r\nbuy\r\n")
        s.sendmail("pest@example.org", ["bob@acme.test"],
                   "From: pest@example.org\r\nSubject: Pest\r\n\r\nagain\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # no such member: 550
            s.sendmail("spam@example.org", ["nobody@acme.test"], "Subject: x\r\n\r\nx\r\n")
    # Logs: a successful IMAP login for log/login.
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
    imap.login("ann@acme.test", PW)
    imap.logout()
    yield e
    d.stop()
    peer.shutdown()
    peer.server_close()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def test_log_mail_shows_delivered_and_bounced(env: dict[str, Any]) -> None:
    body = {"begin_date": BEGIN, "end_date": END, "mailtype": 1, "userid": "ann@acme.test"}

    def settled() -> list[dict[str, Any]]:
        out = cgi(env, "Acme", "log/mail", body)
        assert out["errcode"] == 0, out
        rows = out["list"]
        # delivered: bob and ok@; bounced: bad@ (Exmail's numbers, docs/exmail-api.md)
        by = {r["receiver"]: r["status"] for r in rows}
        return rows if by.get("ok@remote.test") == 3 and by.get("bad@remote.test") == 2 \
            else []

    rows = wait_for("the remote outcomes in log/mail", settled)
    assert {(r["receiver"], r["status"], r["mailtype"], r["sender"]) for r in rows} == {
        ("bob@acme.test", 3, 1, "ann@acme.test"), ("ok@remote.test", 3, 1, "ann@acme.test"),
        ("bad@remote.test", 2, 1, "ann@acme.test")}
    assert all(isinstance(r["time"], int) and abs(r["time"] - time.time()) < 3600
               for r in rows)
    # Received by bob: ann's message, the one to his alias (13: in the mailbox)
    # and the blocked sender's (12: filed to Junk); a subject filter.
    got = cgi(env, "Acme", "log/mail", {"begin_date": BEGIN, "end_date": END, "mailtype": 2,
                                        "userid": "bob@acme.test"})["list"]
    assert sorted((r["sender"], r["mailtype"], r["status"]) for r in got) == [
        ("ann@acme.test", 2, 13), ("pest@example.org", 2, 12),
        ("someone@example.org", 2, 13)]
    got = cgi(env, "Acme", "log/mail", {"begin_date": BEGIN, "end_date": END, "mailtype": 0,
                                        "subject": "réport"})["list"]
    assert {r["receiver"] for r in got} == {"bob@acme.test", "ok@remote.test",
                                            "bad@remote.test"}
    # Sent (out) without a user: only the relayed copies.
    got = cgi(env, "Acme", "log/mail", {"begin_date": BEGIN, "end_date": END,
                                        "mailtype": 1})["list"]
    assert {r["receiver"] for r in got} == {"ok@remote.test", "bad@remote.test"}
    # Another enterprise sees none of it; days outside the range neither.
    assert cgi(env, "Globex", "log/mail", {"begin_date": BEGIN, "end_date": END,
                                           "mailtype": 0})["list"] == []
    got = cgi(env, "Acme", "log/mail", {"begin_date": BEGIN, "end_date": END, "mailtype": 2,
                                        "userid": "nobody@acme.test"})["list"]
    assert [(r["sender"], r["status"]) for r in got] == [("spam@example.org", 11)]
    assert cgi(env, "Acme", "log/mail", {"begin_date": "2020-01-01", "end_date": "2020-01-02",
                                         "mailtype": 0})["list"] == []


def test_log_errors(env: dict[str, Any]) -> None:
    out = cgi(env, "Acme", "log/mail", {"end_date": END, "mailtype": 0})
    assert out["errcode"] == 40058 and "begin_date" in out["errmsg"]
    assert cgi(env, "Acme", "log/mail", {"begin_date": "2026/01/01", "end_date": END}
               )["errcode"] == 40058
    assert cgi(env, "Acme", "log/mail", {"begin_date": BEGIN, "end_date": END, "mailtype": 7}
               )["errcode"] == 40058
    assert cgi(env, "Acme", "log/mail", {"begin_date": "2026-01-01", "end_date": "2026-03-01"}
               )["errcode"] == 40058
    assert cgi(env, "Acme", "log/login", {"begin_date": BEGIN, "end_date": END}
               )["errcode"] == 41009
    assert cgi(env, "Acme", "log/mailstatus", {"domain": "globex.test", "begin_date": BEGIN,
                                               "end_date": END})["errcode"] == 40058
    assert cgi(env, "Acme", "log/batchjob", {"begin_date": BEGIN})["errcode"] == 40058
    assert cgi(env, "Acme", "log/operation", {"begin_date": BEGIN, "end_date": END,
                                              "type": 10})["errcode"] == 40058


def test_log_login_and_mailstatus(env: dict[str, Any]) -> None:
    out = cgi(env, "Acme", "log/login", {"userid": "ann@acme.test", "begin_date": BEGIN,
                                         "end_date": END})
    assert out["errcode"] == 0, out
    assert {"ip": "127.0.0.1", "type": 2} in [{k: r[k] for k in ("ip", "type")}
                                              for r in out["list"]]  # IMAP
    assert cgi(env, "Globex", "log/login", {"userid": "ann@acme.test", "begin_date": BEGIN,
                                            "end_date": END})["list"] == []
    wait_for("rows", lambda: cgi(env, "Acme", "log/mail", {
        "begin_date": BEGIN, "end_date": END, "mailtype": 0})["list"])
    out = cgi(env, "Acme", "log/mailstatus", {"domain": "acme.test", "begin_date": BEGIN,
                                              "end_date": END})
    assert out["errcode"] == 0, out
    # Sent: ann's three copies; received: bob's three (one of them in Junk).
    assert (out["sendsum"], out["recvsum"]) == (3, 3)


def test_admin_and_member_api(env: dict[str, Any]) -> None:
    tok = env["token"]
    wait_for("the bounce", lambda: api(env, "/maillog?status=bounced", tok)[1]["items"])
    status, page = api(env, "/maillog?member=bob@acme.test&direction=in", tok)
    assert status == 200, page
    alias_row = next(r for r in page["items"] if r["sender"] == "someone@example.org")
    assert alias_row["recipient"] == "bob@acme.test"
    assert alias_row["written_to"] == "sales@acme.test"  # the address as written
    assert alias_row["subject"] == "Offer" and alias_row["size"] > 0
    assert alias_row["queue_id"] and alias_row["client"] == "127.0.0.1"
    status, page = api(env, "/maillog?subject=QUARTERLY&status=bounced", tok)
    assert [(r["recipient"], r["direction"], r["subject"]) for r in page["items"]] == [
        ("bad@remote.test", "out", "Quarterly réport")]
    status, out = api(env, "/maillog?format=csv&domain=remote.test", tok)
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert sorted((r["recipient"], r["status"]) for r in rows) == [
        ("bad@remote.test", "bounced"), ("ok@remote.test", "delivered")]
    status, page = api(env, "/maillog?status=junk", tok)
    assert [(r["sender"], r["recipient"], r["direction"], r["subject"])
            for r in page["items"]] == [("pest@example.org", "bob@acme.test", "in", "Pest")]
    status, page = api(env, "/maillog?status=refused", tok)
    assert [(r["sender"], r["recipient"], r["direction"], r["client"]) for r in page["items"]
            ] == [("spam@example.org", "nobody@acme.test", "in", "127.0.0.1")]
    assert api(env, "/maillog?status=lost", tok)[0] == 400
    assert api(env, "/maillog", "")[0] == 401
    # A member sees its own sent mail with each recipient's status, and no one else's.
    status, body = api(env, "/me/login", "", "POST", {"address": "ann@acme.test",
                                                      "password": PW})
    assert status == 200, body
    status, mine = api(env, "/me/maillog", body["token"])
    assert status == 200, mine
    assert {(r["recipient"], r["status"]) for r in mine["items"]} == {
        ("bob@acme.test", "delivered"), ("ok@remote.test", "delivered"),
        ("bad@remote.test", "bounced")}
    status, body = api(env, "/me/login", "", "POST", {"address": "bob@acme.test",
                                                      "password": PW})
    assert api(env, "/me/maillog", body["token"])[1]["items"] == []
    assert api(env, "/me/maillog", tok)[0] == 403  # an admin token is no member


def test_cli(env: dict[str, Any]) -> None:
    wait_for("the bounce", lambda: api(env, "/maillog?status=bounced", env["token"])[1][
        "items"])
    out = ctl(env["config"], "log", "mail", "--account", "ann@acme.test", "--since",
              BEGIN, "--direction", "out")
    lines = [x.split("\t") for x in out.splitlines()]
    assert sorted((x[4], x[6]) for x in lines) == [("bad@remote.test", "bounced"),
                                                   ("ok@remote.test", "delivered")]
    assert all(x[1] == "out" and x[3] == "ann@acme.test" and x[8] == "Quarterly réport"
               for x in lines)
    r = exmailctl(env["config"], "log", "mail", "--since", "yesterday")
    assert r.returncode != 0 and "YYYY-MM-DD" in r.stderr



def test_log_operation_and_batchjob(env: dict[str, Any]) -> None:
    """The operation log's rows with Exmail's numbers (docs/exmail-api.md)."""
    body = {"begin_date": BEGIN, "end_date": END, "type": 0}
    out = cgi(env, "Acme", "log/operation", body)
    assert out["errcode"] == 0, out
    rows = {(r["type"], r["operand"]) for r in out["list"]}
    assert {(19, "ann@acme.test"), (19, "bob@acme.test"), (24, "sales@acme.test"),
            (3, "acme.test"), (25, "1 members")} <= rows, rows
    assert all(r["operator"].startswith("cli") for r in out["list"])  # exmailctl's
    assert not any("globex" in r["operand"] for r in out["list"])  # Acme's rows only
    assert all(isinstance(r["time"], int) and abs(r["time"] - time.time()) < 3600
               for r in out["list"])
    # 7: members and groups; 4: enterprise and domains; 8: nothing here.
    body["type"] = 7
    types = {r["type"] for r in cgi(env, "Acme", "log/operation", body)["list"]}
    assert 19 in types and 24 in types and 3 not in types
    body["type"] = 4
    assert {r["operand"] for r in cgi(env, "Acme", "log/operation", body)["list"]} >= {
        "acme.test"}
    body["type"] = 8
    assert cgi(env, "Acme", "log/operation", body)["list"] == []
    out = cgi(env, "Globex", "log/operation", {"begin_date": BEGIN, "end_date": END,
                                                "type": 0})
    assert {r["operand"] for r in out["list"]} >= {"gus@globex.test"}
    assert not any("acme" in r["operand"] for r in out["list"])
    out = cgi(env, "Acme", "log/operation", {"begin_date": "2020-01-01",
                                             "end_date": "2020-01-02", "type": 0})
    assert out == {"errcode": 0, "errmsg": "ok", "list": []}

    # The CSV import is the batch job (2: members imported).
    out = cgi(env, "Acme", "log/batchjob", {"begin_date": BEGIN, "end_date": END})
    assert out["errcode"] == 0, out
    assert [r["type"] for r in out["list"]] == [2]
    assert out["list"][0]["operator"].startswith("cli")
    assert cgi(env, "Globex", "log/batchjob", {"begin_date": BEGIN, "end_date": END}
               )["list"] == []

"""Exmail's open API under /cgi-bin/, over real HTTP against the real daemon.

The client below is written from Exmail's API documentation (gettoken, then
calls with ?access_token=..., JSON bodies, errcode/errmsg in every answer),
not from exmaild's helpers. Mail goes through smtplib, logins through
imaplib and poplib.
"""

from __future__ import annotations

import imaplib
import json
import poplib
import re
import smtplib
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
TOKEN_TTL = 3  # short, so that expiry is seen; the client re-fetches as SDKs do


class Exmail:
    """A minimal Exmail API client: https://api.exmail.qq.com/cgi-bin/ with
    the host swapped for exmaild's admin listener."""

    def __init__(self, port: int, corpid: str, secret: str) -> None:
        self.base = f"http://127.0.0.1:{port}/cgi-bin/"
        self.corpid, self.secret = corpid, secret
        self.token = ""

    def raw(self, path: str, query: dict[str, Any] | None = None, body: Any = None
            ) -> dict[str, Any]:
        url = self.base + path + "?" + urllib.parse.urlencode(query or {})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200  # Exmail answers 200 whatever happened
            return json.loads(r.read())

    def gettoken(self) -> dict[str, Any]:
        return self.raw("gettoken", {"corpid": self.corpid, "corpsecret": self.secret})

    def call(self, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        for _ in range(3):
            if not self.token:
                r = self.gettoken()
                assert r["errcode"] == 0, r
                self.token = r["access_token"]
            out = self.raw(path, {"access_token": self.token, **query}, body)
            if out["errcode"] not in (42001, 40014):
                return out
            self.token = ""  # expired: fetch another, as the SDKs do
        return out

    def ok(self, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        out = self.call(path, body, **query)
        assert out["errcode"] == 0 and out["errmsg"] == "ok", (path, out)
        return out

    def err(self, path: str, body: Any = None, **query: Any) -> int:
        out = self.call(path, body, **query)
        assert set(out) == {"errcode", "errmsg"} and out["errmsg"], out
        self.last = out
        return int(out["errcode"])


def ctl(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def secret(config: Path, ent: str, purpose: str) -> tuple[str, str]:
    line = ctl(config, "exmail-api", "secret", "create", "--enterprise", ent,
               "--purpose", purpose)
    m = re.fullmatch(r"corpid=([A-Za-z0-9_-]+) secret=([A-Za-z0-9_-]+)\n", line)
    assert m, line
    return m[1], m[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("exmailapi")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url, exmail_api={"token_ttl": TOKEN_TTL})
    ctl(config, "enterprise", "add", "Acme")
    ctl(config, "domain", "add", "acme.test", "--enterprise", "Acme")
    ctl(config, "enterprise", "add", "Globex")
    ctl(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    ctl(config, "user", "add", "gus@globex.test", "--password-stdin", stdin=f"{PW}\n")
    ctl(config, "user", "add", "old@acme.test", "--password-stdin", stdin=f"{PW}\n")
    secrets = {p: secret(config, "Acme", p) for p in ("directory", "newmail", "login")}
    g_corp, g_secret = secret(config, "Globex", "directory")
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    port = ports["admin"]
    yield {"config": config, "ports": ports,
           **{p: Exmail(port, *cs) for p, cs in secrets.items()},
           "globex": Exmail(port, g_corp, g_secret)}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def imap_login(port: int, user: str, pw: str) -> str:
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login(user, pw)
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        imap.shutdown()
    return "OK"


def deliver(port: int, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as mx:
        mx.sendmail("someone@example.org", [rcpt],
                    f"From: someone@example.org\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhi\r\n")


def test_gettoken_and_token_errors(env: dict[str, Any]) -> None:
    d: Exmail = env["directory"]
    r = d.gettoken()
    assert r["errcode"] == 0 and r["expires_in"] == TOKEN_TTL
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", r["access_token"])
    assert d.raw("gettoken", {"corpsecret": d.secret})["errcode"] == 41002
    assert d.raw("gettoken", {"corpid": d.corpid})["errcode"] == 41004
    assert d.raw("gettoken", {"corpid": "nope", "corpsecret": d.secret})["errcode"] == 40013
    # Another enterprise's secret does not open this corp id.
    assert d.raw("gettoken", {"corpid": d.corpid,
                              "corpsecret": env["globex"].secret})["errcode"] == 40001
    assert d.raw("department/list")["errcode"] == 41001
    assert d.raw("department/list", {"access_token": "bogus"})["errcode"] == 40014
    tok = r["access_token"]
    assert d.raw("department/list", {"access_token": tok})["errcode"] == 0
    # A directory token reaches no other purpose's calls, and the reverse.
    assert d.raw("mail/newcount", {"access_token": tok, "userid": "old@acme.test"}
                 )["errcode"] == 48002
    assert d.raw("log/mail", {"access_token": tok}, {"begin_date": "2026-01-01",
                 "end_date": "2026-01-02", "mailtype": 0})["errcode"] == 48002
    for call in ("log/operation", "log/batchjob"):
        assert d.raw(call, {"access_token": tok}, {"begin_date": "2026-01-01",
                     "end_date": "2026-01-02", "type": 0})["errcode"] == 48002
    n = env["newmail"].gettoken()["access_token"]
    assert d.raw("user/get", {"access_token": n, "userid": "old@acme.test"})["errcode"] == 48002
    deadline = time.monotonic() + 60
    while d.raw("department/list", {"access_token": tok})["errcode"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert d.raw("department/list", {"access_token": tok})["errcode"] == 42001


def test_departments(env: dict[str, Any]) -> None:
    d: Exmail = env["directory"]
    sales = d.ok("department/create", {"name": "Sales", "parentid": 1, "order": 2})["id"]
    east = d.ok("department/create", {"name": "East", "parentid": sales})["id"]
    eng = d.ok("department/create", {"name": "Eng", "parentid": "1", "order": 1})["id"]
    assert len({1, sales, east, eng}) == 4
    tree = d.ok("department/list", id=1)["department"]
    assert tree[0] == {"id": 1, "name": "Acme", "parentid": 0, "order": 0}
    assert [x["name"] for x in tree[1:]] == ["Eng", "Sales", "East"]
    assert {"id": east, "name": "East", "parentid": sales, "order": 0} in tree
    assert [x["id"] for x in d.ok("department/list", id=sales)["department"]] == [sales, east]
    found = d.ok("department/search", {"name": "ast", "fuzzy": 1})["department"]
    assert found == [{"id": east, "name": "East", "parentid": sales, "order": 0,
                      "path": "Acme/Sales/East"}]
    assert d.ok("department/search", {"name": "ast", "fuzzy": 0})["department"] == []
    d.ok("department/update", {"id": east, "name": "Eastern", "order": 5})
    assert d.ok("department/search", {"name": "Eastern", "fuzzy": 0})["department"][0][
        "order"] == 5
    assert d.err("department/create", {"name": "Eng", "parentid": 1}) == 60008
    assert d.err("department/create", {"name": "", "parentid": 1}) == 60001
    assert d.err("department/create", {"name": "a/b", "parentid": 1}) == 60009
    assert d.err("department/create", {"name": "X", "parentid": 999999}) == 60004
    assert d.err("department/update", {"id": sales, "parentid": east}) == 60010
    assert d.err("department/update", {"id": 999999, "name": "Y"}) == 60003
    assert d.err("department/delete", id=1) == 60007
    assert d.err("department/delete", id=sales) == 60006
    assert d.err("department/delete", id=999999) == 60003
    tmp = d.ok("department/create", {"name": "Tmp", "parentid": eng})["id"]
    d.ok("department/delete", id=tmp)
    assert d.err("department/delete", id=tmp) == 60003
    env["depts"] = {"sales": sales, "east": east, "eng": eng}


def test_users_and_logins(env: dict[str, Any]) -> None:
    d: Exmail = env["directory"]
    ports = env["ports"]
    depts = env["depts"]
    d.ok("user/create", {"userid": "ann@acme.test", "name": "Ann", "department": [depts["east"]],
                         "position": "Rep", "mobile": "+86 138 0000 0000", "gender": "2",
                         "extid": "E1", "slaves": ["annie@acme.test"], "password": PW,
                         "cpwd_login": 0, "tel": "010-1234"})
    got = d.ok("user/get", userid="ANN@acme.test")
    assert {k: got[k] for k in ("userid", "name", "department", "position", "mobile", "extid",
                                "gender", "enable", "slaves", "cpwd_login", "tel")} == {
        "userid": "ann@acme.test", "name": "Ann", "department": [depts["east"]],
        "position": "Rep", "mobile": "+86 138 0000 0000", "extid": "E1", "gender": "2",
        "enable": 1, "slaves": ["annie@acme.test"], "cpwd_login": 0, "tel": "010-1234"}
    assert imap_login(ports["imap"], "ann@acme.test", PW) == "OK"
    # "" means not given: the password stays.
    d.ok("user/update", {"userid": "ann@acme.test", "password": "", "name": "Ann B",
                         "slaves": ["ann.b@acme.test"], "tel": "", "mobile": ""})
    assert imap_login(ports["imap"], "ann@acme.test", PW) == "OK"
    got = d.ok("user/get", userid="ann@acme.test")
    assert got["name"] == "Ann B" and got["slaves"] == ["ann.b@acme.test"]
    assert got["tel"] == "010-1234" and got["mobile"] == "+86 138 0000 0000"

    assert d.err("user/create", {"userid": "ann@acme.test", "name": "A", "department": [1],
                                 "password": PW}) == 60102
    assert d.err("user/create", {"userid": "xavier@globex.test", "name": "A", "department": [1],
                                 "password": PW}) == 40003, d.last
    assert d.err("user/create", {"userid": "y@acme.test", "name": "A", "department": [],
                                 "password": PW}) == 60127
    assert d.err("user/create", {"userid": "y@acme.test", "name": "A", "department": [999999],
                                 "password": PW}) == 60123
    assert d.err("user/create", {"userid": "y@acme.test", "name": "A", "department": [1],
                                 "mobile": "call me", "password": PW}) == 60103
    assert d.err("user/create", {"userid": "y@acme.test", "name": "\x01", "department": [1],
                                 "password": PW}) == 60112
    assert d.err("user/get", userid="nobody@acme.test") == 60111
    assert d.err("user/get") == 41009
    assert d.err("department/delete", id=depts["east"]) == 60005

    # Listing: East's member shows under Sales only with fetch_child.
    assert d.ok("user/simplelist", department_id=depts["sales"], fetch_child=0)["userlist"] == []
    sl = d.ok("user/simplelist", department_id=depts["sales"], fetch_child=1)["userlist"]
    assert sl == [{"userid": "ann@acme.test", "name": "Ann B", "department": [depts["east"]]}]
    full = d.ok("user/list", department_id=1, fetch_child=1)["userlist"]
    assert {u["userid"] for u in full} == {"ann@acme.test", "old@acme.test"}
    assert all("slaves" in u and "enable" in u for u in full)

    # cpwd_login: protocol logins refused until the member sets a password.
    d.ok("user/create", {"userid": "new@acme.test", "name": "New", "department": [1],
                         "password": PW, "cpwd_login": 1})
    assert "[EXPIRED]" in imap_login(ports["imap"], "new@acme.test", PW)
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports['admin']}/api/v1/me/login", method="POST",
        data=json.dumps({"address": "new@acme.test", "password": PW}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        tok = json.loads(r.read())["token"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports['admin']}/api/v1/me/password", method="POST",
        data=json.dumps({"old_password": PW, "new_password": "Fresh4567Zz"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    assert imap_login(ports["imap"], "new@acme.test", "Fresh4567Zz") == "OK"
    assert d.ok("user/get", userid="new@acme.test")["cpwd_login"] == 0

    # enable=0 refuses logins; delete puts the member in the recycle bin.
    d.ok("user/update", {"userid": "new@acme.test", "enable": 0})
    assert imap_login(ports["imap"], "new@acme.test", "Fresh4567Zz") != "OK"
    d.ok("user/delete", userid="new@acme.test")
    assert d.err("user/get", userid="new@acme.test") == 60111
    # The same operation log as /api/v1 and exmailctl, naming the API and the caller.
    logged = ctl(env["config"], "log", "list", "--enterprise", "Acme", "--limit", "500")
    rows = [line.split("\t") for line in logged.splitlines()]
    mine = {(r[1], r[2], r[3], r[4]) for r in rows}
    for action, target in (("member.add", "ann@acme.test"), ("alias.add", "annie@acme.test"),
                           ("alias.remove", "annie@acme.test"), ("member.delete", "new@acme.test"),
                           ("department.add", "Sales/East")):
        assert ("exmail-api:directory", "127.0.0.1", action, target) in mine, (action, logged)


def test_batchcheck_groups_and_isolation(env: dict[str, Any]) -> None:
    d: Exmail = env["directory"]
    depts = env["depts"]
    d.ok("group/create", {"groupid": "team@acme.test", "groupname": "Team",
                          "userlist": ["old@acme.test"], "department": [depts["eng"]],
                          "allow_type": 1})
    g = d.ok("group/get", groupid="team@acme.test")
    assert {k: g[k] for k in ("groupid", "groupname", "userlist", "grouplist", "department",
                              "allow_type", "allow_userlist")} == {
        "groupid": "team@acme.test", "groupname": "Team", "userlist": ["old@acme.test"],
        "grouplist": [], "department": [depts["eng"]], "allow_type": 1, "allow_userlist": []}
    d.ok("group/update", {"groupid": "team@acme.test", "groupname": "Team 2",
                          "userlist": ["ann@acme.test"], "allow_type": 0})
    g = d.ok("group/get", groupid="team@acme.test")
    assert g["userlist"] == ["ann@acme.test"] and g["allow_type"] == 0
    assert g["groupname"] == "Team 2"
    assert g["department"] == [depts["eng"]]  # not given: kept
    # Lists given replace the group's: the department goes, only ann may write.
    d.ok("group/update", {"groupid": "team@acme.test", "department": [], "allow_type": 3,
                          "allow_userlist": ["ann@acme.test"]})
    g = d.ok("group/get", groupid="team@acme.test")
    assert (g["department"], g["userlist"], g["allow_type"], g["allow_userlist"]) == (
        [], ["ann@acme.test"], 3, ["ann@acme.test"])
    ports = env["ports"]
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        s.login("ann@acme.test", PW)
        s.sendmail("ann@acme.test", ["team@acme.test"], "Subject: to the team\r\n\r\nhi\r\n")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s, \
            pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("someone@example.org", ["team@acme.test"], "Subject: x\r\n\r\nx\r\n")
    d.ok("group/update", {"groupid": "team@acme.test", "department": [depts["eng"]],
                          "allow_userlist": ["old@acme.test"]})
    g = d.ok("group/get", groupid="team@acme.test")
    assert (g["department"], g["allow_userlist"]) == ([depts["eng"]], ["old@acme.test"])
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        s.login("ann@acme.test", PW)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("ann@acme.test", ["team@acme.test"], "Subject: again\r\n\r\nhi\r\n")
    assert d.err("group/update", {"groupid": "team@acme.test",
                                  "allow_userlist": ["not an address"]}) == 40003
    assert d.err("group/update", {"groupid": "team@acme.test", "department": [99999]}
                 ) == 60123
    assert d.err("group/update", {"groupid": "team@acme.test", "userlist": ["gh@acme.test"]}
                 ) == 60111
    assert d.err("group/create", {"groupid": "team@acme.test", "groupname": "T"}) == 60102
    assert d.err("group/create", {"groupid": "t2@acme.test", "groupname": "T",
                                  "userlist": ["ghost@acme.test"]}) == 60111
    assert d.err("group/get", groupid="ghost@acme.test") == 60111

    checks = d.ok("user/batchcheck", {"userlist": [
        "old@acme.test", "ann.b@acme.test", "team@acme.test", "free@acme.test",
        "gus@globex.test", "not an address"]})["list"]
    assert [c["type"] for c in checks] == [1, 2, 3, 0, -1, -1]
    assert d.err("user/batchcheck", {"userlist": [f"u{i}@acme.test" for i in range(21)]}
                 ) == 40058

    d.ok("group/delete", groupid="team@acme.test")
    assert d.err("group/get", groupid="team@acme.test") == 60111

    # Globex's token sees none of Acme's members or departments.
    gx: Exmail = env["globex"]
    assert gx.err("user/get", userid="ann@acme.test") == 60111
    assert gx.err("user/update", {"userid": "ann@acme.test", "name": "Hacked"}) == 60111
    assert gx.err("department/delete", id=depts["eng"]) == 60003
    assert gx.err("user/create", {"userid": "z@acme.test", "name": "Z", "department": [1],
                                  "password": PW}) == 40003
    assert [x["name"] for x in gx.ok("department/list")["department"]] == ["Globex"]
    assert d.ok("user/get", userid="ann@acme.test")["name"] == "Ann B"


def test_useroption_slaves_and_newcount(env: dict[str, Any]) -> None:
    d: Exmail = env["directory"]
    n: Exmail = env["newmail"]
    ports = env["ports"]
    opts = d.ok("useroption/get", {"userid": "old@acme.test", "type": [1, 2, 3, 4]})["option"]
    assert opts == [{"type": 1, "value": "0"}, {"type": 2, "value": "1"},
                    {"type": 3, "value": "1"}, {"type": 4, "value": "0"}]
    d.ok("useroption/update", {"userid": "old@acme.test", "option": [{"type": 3, "value": "0"}]})
    assert d.ok("useroption/get", {"userid": "old@acme.test", "type": [3]})["option"] == [
        {"type": 3, "value": "0"}]
    deadline = time.monotonic() + 60  # running daemons notice directory changes by polling
    while True:
        pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
        try:
            pop.user("old@acme.test")
            pop.pass_(PW)
            refused = False
        except poplib.error_proto:
            refused = True
        finally:
            pop.close()
        if refused:
            break
        assert time.monotonic() < deadline, "POP3 still allowed after type 3 off"
        time.sleep(0.5)
    assert imap_login(ports["imap"], "old@acme.test", PW) == "OK"
    assert d.err("useroption/update", {"userid": "old@acme.test",
                                       "option": [{"type": 5, "value": "1"}]}) == 40058
    assert d.err("useroption/update", {"userid": "old@acme.test",
                                       "option": [{"type": 4, "value": "yes"}]}) == 40058
    assert d.err("useroption/get", {"userid": "nobody@acme.test", "type": [2]}) == 60111

    # Mail to a slave reaches the member; newcount follows delivery and reads.
    # (ann already has the message she sent her group, test above)
    base = n.ok("mail/newcount", userid="ann@acme.test")["count"]
    deliver(ports["smtp"], "ann.b@acme.test", "one")
    deliver(ports["smtp"], "ann@acme.test", "two")
    assert n.ok("mail/newcount", userid="ann@acme.test")["count"] == base + 2
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))  # Asia/Shanghai
    assert n.ok("mail/newcount", userid="ann@acme.test", begin_date=today,
                end_date=today)["count"] == base + 2
    assert n.ok("mail/newcount", userid="ann@acme.test", begin_date="2020-01-01",
                end_date="2020-01-31")["count"] == 0
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
    imap.login("ann@acme.test", PW)
    imap.select("INBOX")
    typ, data = imap.search(None, "SUBJECT", "one")
    assert typ == "OK" and data[0]
    imap.store(data[0].split()[0], "+FLAGS", "\\Seen")
    imap.logout()
    assert n.ok("mail/newcount", userid="ann@acme.test")["count"] == base + 1
    assert n.err("mail/newcount", userid="ann@acme.test", begin_date="2020/01/01") == 40058
    assert n.err("mail/newcount", userid="gus@globex.test") == 60111
    assert env["login"].err("service/get_login_url", userid="ann@acme.test") == 48002


def wait_login(port: int, user: str, pw: str, ok: bool) -> str:
    deadline = time.monotonic() + 60
    while True:
        got = imap_login(port, user, pw)
        if (got == "OK") == ok:
            return got
        assert time.monotonic() < deadline, (user, got)
        time.sleep(0.5)


def test_useroption_secure_login(env: dict[str, Any]) -> None:
    """Type 4 is the member's secure login, type 1 the enterprise forcing it
    (docs/login-security.md): the account password stops working on IMAP,
    an app password works."""
    d: Exmail = env["directory"]
    port = env["ports"]["imap"]
    who = "vault@acme.test"
    d.ok("user/create", {"userid": who, "name": "Vault", "department": [1], "password": PW})
    app = ctl(env["config"], "apppass", "add", who, "phone").strip()

    def opts(*types: int) -> dict[int, str]:
        got = d.ok("useroption/get", {"userid": who, "type": list(types)})["option"]
        return {o["type"]: o["value"] for o in got}

    assert opts(1, 4) == {1: "0", 4: "0"}
    assert imap_login(port, who, PW) == "OK"
    d.ok("useroption/update", {"userid": who, "option": [{"type": 4, "value": "1"}]})
    assert opts(1, 4) == {1: "0", 4: "1"}
    assert "secure login" in wait_login(port, who, PW, ok=False)
    assert imap_login(port, who, app) == "OK"

    d.ok("useroption/update", {"userid": who, "option": [{"type": 4, "value": "0"}]})
    wait_login(port, who, PW, ok=True)
    # Type 1: the login policy names the member (as login-policy set does).
    d.ok("useroption/update", {"userid": who, "option": [{"type": 1, "value": "1"}]})
    assert opts(1, 4) == {1: "1", 4: "0"}
    assert who in ctl(env["config"], "login-policy", "show", "--enterprise", "Acme")
    assert "secure login" in wait_login(port, who, PW, ok=False)
    assert imap_login(port, who, app) == "OK"
    d.ok("useroption/update", {"userid": who, "option": [{"type": 1, "value": "0"}]})
    assert opts(1) == {1: "0"}
    wait_login(port, who, PW, ok=True)
    assert who not in ctl(env["config"], "login-policy", "show", "--enterprise", "Acme")


def test_secret_revoke(env: dict[str, Any]) -> None:
    gx: Exmail = env["globex"]
    tok = gx.gettoken()["access_token"]
    assert gx.raw("department/list", {"access_token": tok})["errcode"] == 0
    ctl(env["config"], "exmail-api", "secret", "revoke", "--enterprise", "Globex",
        "--purpose", "directory")
    assert gx.gettoken()["errcode"] == 40001
    # Its tokens ended with it.
    assert gx.raw("department/list", {"access_token": tok})["errcode"] == 40014
    r = exmailctl(env["config"], "exmail-api", "secret", "revoke", "--enterprise", "Globex",
                  "--purpose", "directory")
    assert r.returncode == 1 and "no directory secret" in r.stderr

    # The same through /api/v1, with the enterprise's admin API token.
    admin = ctl(env["config"], "token", "create", "--enterprise", "Globex").strip()
    base = f"http://127.0.0.1:{env['ports']['admin']}/api/v1/exmail-api/secrets"
    req = urllib.request.Request(base, method="POST", data=b'{"purpose": "directory"}',
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
        made = json.loads(resp.read())
    assert made["corpid"] == gx.corpid and made["purpose"] == "directory"
    gx.secret, gx.token = made["secret"], ""
    assert [x["name"] for x in gx.ok("department/list")["department"]] == ["Globex"]
    req = urllib.request.Request(base + "/directory", method="DELETE",
                                 headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    assert gx.gettoken()["errcode"] == 40001


def test_bad_input_gets_an_errcode(env: dict[str, Any]) -> None:
    """Garbage on every call: an Exmail error each time, never a crash or a 500."""
    d: Exmail = env["directory"]
    tok = d.gettoken()["access_token"]
    calls = ["department/create", "department/update", "department/delete", "department/list",
             "department/search", "user/create", "user/update", "user/delete", "user/get",
             "user/simplelist", "user/list", "user/batchcheck", "group/create", "group/update",
             "group/delete", "group/get", "useroption/get", "useroption/update", "nowhere"]
    junk: list[Any] = [[1, 2], "text", {"userid": ["a"], "id": {"x": 1}, "name": 7,
                                        "department": "1", "parentid": True, "type": "2",
                                        "option": [1], "userlist": "a@acme.test",
                                        "groupid": 5, "slaves": [1] * 9, "gender": "9"},
                       {"userid": "ghost@acme.test", "department": [None], "option": [{}]}]
    for path in calls:
        for body in junk:
            out = d.raw(path, {"access_token": tok, "id": "x", "userid": "\u00e9@\u00e9",
                               "department_id": "-5"}, body)
            assert out["errcode"] not in (0, -1) and out["errmsg"], (path, body, out)
    tok = d.gettoken()["access_token"]  # the loop above may outlive TOKEN_TTL
    req = urllib.request.Request(d.base + "user/create?access_token=" + tok, method="POST",
                                 data=b"\xff{not json")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["errcode"] == 40058
    assert d.ok("user/get", userid="ann@acme.test")["userid"] == "ann@acme.test"


def test_config_rejects_bad_ttl_and_time_zone(tmp_path: Path) -> None:
    from exmaild.config import ConfigError, load_config

    path = tmp_path / "bad.toml"
    path.write_text('[exmail_api]\ntoken_ttl = 0\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert any("exmail_api.token_ttl" in x for x in e.value.errors)
    assert any("exmail_api.timezone" in x and "Mars/Olympus" in x for x in e.value.errors)

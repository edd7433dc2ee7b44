"""Login security end to end (issue #14): app passwords, secure login (own
and forced), business mailboxes through app passwords, IP rules, protocol
switches, brute-force throttling and the login log, through real clients
(imaplib, smtplib, poplib, HTTP) on one real daemon. Clients bind to
127.0.0.2 / .3 / .4: 127.0.0.1 is exempt from throttling by default."""

from __future__ import annotations

import contextlib
import http.client
import imaplib
import io
import json
import poplib
import re
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from exmaild.auth.passwords import hash_password
from exmaild.config import load_config
from exmaild.startup_checks import check_database
from exmaild.store.connector import Store

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config

PW = "Secret123x"
ATTACKER, OWNER, SHARED_NAT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# The fail2ban filter of docs/login-security.md, <HOST> as fail2ban expands it.
FAILREGEX = r"login refused: user=\S* rip=<HOST> "


_STORE: list[Store] = []  # the module's in-process store (same database as the daemon)


async def cli(*argv: str) -> tuple[int, str, str]:
    """exmailctl's parser and command handlers, in-process (a subprocess costs
    seconds here); `test_cli_contract` runs the real exmailctl once."""
    from exmaild.cli import _COMMANDS, build_parser
    from exmaild.directory.errors import ServiceError

    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = await _COMMANDS[(args.group, args.cmd)](_STORE[0], args)
    except ServiceError as e:
        return 1, out.getvalue(), str(e)
    return rc, out.getvalue(), ""


async def ok(config: Path, *args: str) -> str:
    rc, out, err = await cli(*args)
    assert rc == 0, (args, err)
    return out


async def fails(config: Path, *args: str, message: str) -> None:
    rc, out, err = await cli(*args)
    assert rc != 0 and message in err, (args, out, err)


def setup_ok(config: Path, *args: str) -> str:
    """`ok` from the (synchronous) fixture, outside the reactor's greenlet."""
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(ok(config, *args)))


class IMAP(imaplib.IMAP4):
    def __init__(self, port: int, src: str) -> None:
        self._src = src
        super().__init__("127.0.0.1", port, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._src, 0))


class POP3(poplib.POP3):
    def __init__(self, port: int, src: str) -> None:
        self._src = src
        super().__init__("127.0.0.1", port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._src, 0))


def imap_login(env: dict[str, Any], user: str, pw: str, src: str = OWNER) -> tuple[str, str]:
    """('OK', text) or ('NO', text) of LOGIN from `src`."""
    c = IMAP(env["ports"]["imap"], src)
    try:
        typ, data = c._simple_command("LOGIN", user, c._quote(pw))  # type: ignore[attr-defined]
        return typ, b" ".join(x for x in data if isinstance(x, bytes)).decode()
    except imaplib.IMAP4.error as e:
        return "NO", str(e)
    finally:
        try:
            c.logout()
        except Exception:
            pass


def pop_login(env: dict[str, Any], user: str, pw: str, src: str = OWNER) -> str:
    c = POP3(env["ports"]["pop3"], src)
    try:
        c.user(user)
        return c.pass_(pw).decode()
    except poplib.error_proto as e:
        return e.args[0].decode()
    finally:
        try:
            c.quit()
        except Exception:
            pass


def smtp_login(env: dict[str, Any], user: str, pw: str, src: str = OWNER) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", env["ports"]["submission"], timeout=30,
                      source_address=(src, 0)) as s:
        s.ehlo()
        try:
            code, text = s.login(user, pw)
        except smtplib.SMTPAuthenticationError as e:
            code, text = e.smtp_code, e.smtp_error
        except smtplib.SMTPResponseException as e:
            code, text = e.smtp_code, e.smtp_error
        return code, text.decode()


def api(env: dict[str, Any], method: str, path: str, token: str | None = None,
        body: Any = None, src: str = "127.0.0.1") -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", env["ports"]["admin"], timeout=30,
                                   source_address=(src, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, "/api/v1" + path, body=json.dumps(body) if body is not None else None,
              headers=headers)
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, (json.loads(text) if text.strip() else None)


def member_token(env: dict[str, Any], who: str) -> str:
    status, body = api(env, "POST", "/me/login", body={"address": who, "password": PW})
    assert status == 200, body
    return body["token"]


async def logins(env: dict[str, Any], *args: str) -> list[list[str]]:
    return [line.split("\t") for line in
            (await ok(env["config"], "log", "logins", *args)).splitlines()]


async def add_members(store: Store, users: dict[str, str | None]) -> None:
    """Through the directory service, with one argon2 hash for all (each costs
    ~0.1 s of CPU; `user add` would make one per member)."""
    from exmaild.directory.actor import CLI
    from exmaild.directory.service import DirectoryService

    svc = DirectoryService(store, store.cfg.directory)
    pw_hash = hash_password(PW)
    for who, dept in users.items():
        await svc.add_member(CLI, f"{who}@acme.test", None, departments=[dept] if dept else [])
        await store.directory.set_password(f"{who}@acme.test", pw_hash)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("loginsec")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url, auth={
        "throttle_account_failures": 3, "throttle_ip_failures": 8, "throttle_delay": 0.05,
        "throttle_max_delay": 0.2})
    cfg = load_config(config)
    check_database(cfg, create=True)
    from twisted.internet import reactor

    store = Store(cfg, reactor)
    store.open()
    store.startService()
    _STORE[:] = [store]
    setup_ok(config, "enterprise", "add", "Acme")
    setup_ok(config, "domain", "add", "acme.test")
    setup_ok(config, "dept", "add", "Sales")
    setup_ok(config, "dept", "add", "Sales/East")
    users = {"ann": "Sales", "bob": "Sales/East", "cy": None, "dan": None, "eve": None,
             "fay": None, "gus": None, "hal": None, "ida": None,
             "joe": None}
    setup_ok(config, "enterprise", "settings", "--welcome", "off")
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(add_members(store, users)))
    setup_ok(config, "shared", "add", "sales@acme.test", "--assign", "ann@acme.test")
    token = setup_ok(config, "token", "create").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"config": config, "ports": ports, "token": token, "daemon": d}
    d.stop()
    store.stopService()
    assert "Traceback" not in d.output(), d.output()[-3000:]


@pytest_twisted.ensureDeferred
async def test_cli_contract(env: dict[str, Any]) -> None:
    """The real exmailctl: `apppass add` prints only the password."""
    r = exmailctl(env["config"], "apppass", "add", "hal@acme.test", "mutt")
    assert r.returncode == 0 and re.fullmatch(r"[a-z]{4}(-[a-z]{4}){3}\n", r.stdout), r
    assert imap_login(env, "hal@acme.test", r.stdout.strip())[0] == "OK"
    await fails(env["config"], "user", "set", "nobody@acme.test", "--secure-login", "on",
          message="unknown member nobody@acme.test")


@pytest_twisted.ensureDeferred
async def test_app_passwords_and_secure_login(env: dict[str, Any]) -> None:
    config = env["config"]
    out = await ok(config, "apppass", "add", "ann@acme.test", "phone")
    assert re.fullmatch(r"[a-z]{4}(-[a-z]{4}){3}\n", out), out  # only the password
    app = out.strip()
    await fails(config, "apppass", "add", "ann@acme.test", "phone", message="already has")
    # Before secure login both work.
    assert imap_login(env, "ann@acme.test", PW)[0] == "OK"
    assert pop_login(env, "ann@acme.test", app).startswith("+OK")
    said = await ok(config, "user", "set", "ann@acme.test", "--secure-login", "on")
    assert said == "ann@acme.test: secure login on\n"
    # The account password is refused on every mail protocol, with the reason ...
    typ, text = imap_login(env, "ann@acme.test", PW)
    assert typ == "NO" and "secure login is on" in text, text
    code, text = smtp_login(env, "ann@acme.test", PW)
    assert code == 535 and "secure login is on" in text, text
    assert pop_login(env, "ann@acme.test", PW).startswith("-ERR [AUTH] secure login is on")
    # ... the app password works on each, and the API keeps the account password.
    assert imap_login(env, "ann@acme.test", app)[0] == "OK"
    assert smtp_login(env, "ann@acme.test", app)[0] == 235
    assert pop_login(env, "ann@acme.test", app).startswith("+OK")
    assert api(env, "POST", "/me/login", body={"address": "ann@acme.test",
                                              "password": PW})[0] == 200
    assert api(env, "POST", "/me/login", body={"address": "ann@acme.test",
                                              "password": app})[0] == 401
    [listed] = [line.split("\t") for line in
                (await ok(config, "apppass", "list", "ann@acme.test")).splitlines()]
    assert listed[0] == "phone" and listed[2] != "-" and listed[3] == "ann@acme.test"
    # Revocation takes effect at the next login.
    await ok(config, "apppass", "revoke", "ann@acme.test", "phone")
    typ, text = imap_login(env, "ann@acme.test", app)
    assert typ == "NO" and "AUTHENTICATIONFAILED" in text, text
    await ok(config, "user", "set", "ann@acme.test", "--secure-login", "off")
    assert imap_login(env, "ann@acme.test", PW)[0] == "OK"
    rows = await logins(env, "--account", "ann@acme.test")
    assert all(len(r) == 7 for r in rows), rows
    seen = {(r[2], r[3], r[4], r[5], r[6]) for r in rows}
    assert (OWNER, "imap", "app:phone", "ok", "") in seen, seen
    assert (OWNER, "smtp", "app:phone", "ok", "") in seen
    assert (OWNER, "pop3", "password", "fail", "account password under secure login") in seen
    assert (OWNER, "imap", "password", "fail", "wrong password") in seen  # the revoked one
    assert ("127.0.0.1", "api-me", "password", "ok", "") in seen


@pytest_twisted.ensureDeferred
async def test_business_mailbox_logs_in_with_an_assigned_members_app_password(
        env: dict[str, Any]) -> None:
    config = env["config"]
    ann = member_token(env, "ann@acme.test")
    status, body = api(env, "POST", "/me/app-passwords", ann,
                       {"name": "shop", "mailbox": "sales@acme.test"})
    assert status == 201 and body["account"] == "sales@acme.test", body
    app = body["password"]
    bob = member_token(env, "bob@acme.test")
    status, body = api(env, "POST", "/me/app-passwords", bob,
                       {"name": "x", "mailbox": "sales@acme.test"})
    assert status == 403 and "not a business mailbox assigned to you" in \
        body["error"]["message"], body
    await fails(config, "apppass", "add", "sales@acme.test", "x", message="business mailbox")
    await fails(config, "apppass", "add", "sales@acme.test", "x", "--by", "cy@acme.test",
          message="not assigned")
    c = IMAP(env["ports"]["imap"], OWNER)
    c.login("sales@acme.test", app)
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    status, body = api(env, "GET", "/me/app-passwords", ann)
    assert [(p["account"], p["name"]) for p in body["items"]] == [("sales@acme.test", "shop")]
    # Taken off the mailbox, the member's app password no longer opens it.
    await ok(config, "shared", "unassign", "sales@acme.test", "ann@acme.test")
    assert imap_login(env, "sales@acme.test", app)[0] == "NO"
    await ok(config, "shared", "assign", "sales@acme.test", "ann@acme.test")
    assert imap_login(env, "sales@acme.test", app)[0] == "OK"
    status, body = api(env, "GET", "/me/logins", ann)
    assert status == 200 and {e["protocol"] for e in body["items"]} >= {"imap", "api-me"}


@pytest_twisted.ensureDeferred
async def test_forced_secure_login(env: dict[str, Any]) -> None:
    tok = env["token"]
    status, body = api(env, "PATCH", "/login-policy", tok,
                       {"secure_login": {"departments": ["Sales"]}})
    assert status == 200 and body["secure_login"]["departments"] == ["Sales"], body
    try:
        # bob is in Sales/East: forced, and has no app password yet.
        typ, text = imap_login(env, "bob@acme.test", PW)
        assert typ == "NO" and "administrator requires secure login" in text, text
        code, text = smtp_login(env, "bob@acme.test", PW)
        assert code == 535 and "create an app password" in text, text
        assert imap_login(env, "cy@acme.test", PW)[0] == "OK"  # not in Sales
        api(env, "PATCH", "/login-policy", tok, {"secure_login": {"everyone": True}})
        assert imap_login(env, "cy@acme.test", PW)[0] == "NO"
        status, body = api(env, "POST", "/members/cy@acme.test/app-passwords", tok,
                           {"name": "laptop"})
        assert status == 201, body
        assert imap_login(env, "cy@acme.test", body["password"])[0] == "OK"
        status, body = api(env, "GET", "/members/cy@acme.test/app-passwords", tok)
        assert [p["name"] for p in body["items"]] == ["laptop"]
        assert api(env, "DELETE", "/members/cy@acme.test/app-passwords/laptop", tok)[0] == 204
    finally:
        api(env, "PATCH", "/login-policy", tok,
            {"secure_login": {"everyone": False, "departments": []}})
    assert imap_login(env, "bob@acme.test", PW)[0] == "OK"


@pytest_twisted.ensureDeferred
async def test_ip_restriction_with_exempt_members(env: dict[str, Any]) -> None:
    tok = env["token"]
    status, body = api(env, "PATCH", "/login-policy", tok, {
        "ip_allow": [f"{OWNER}/32", "2001:db8::/32"], "ip_exempt": ["dan@acme.test"]})
    assert status == 200 and body["ip_exempt"] == ["dan@acme.test"], body
    try:
        typ, text = imap_login(env, "cy@acme.test", PW, src=ATTACKER)
        assert typ == "NO" and "not allowed" in text, text
        assert pop_login(env, "cy@acme.test", PW, src=ATTACKER).startswith("-ERR")
        assert imap_login(env, "cy@acme.test", PW, src=OWNER)[0] == "OK"
        assert imap_login(env, "dan@acme.test", PW, src=ATTACKER)[0] == "OK"  # exempt
        status, body = api(env, "POST", "/me/login", body={"address": "cy@acme.test",
                                                           "password": PW}, src=ATTACKER)
        assert status == 403, body
        status, body = api(env, "GET", "/logins?account=cy@acme.test&result=fail", tok)
        assert any(e["ip"] == ATTACKER and "not allowed by the enterprise" in e["reason"]
                   for e in body["items"]), body
    finally:
        api(env, "PATCH", "/login-policy", tok, {"ip_allow": [], "ip_exempt": []})
    assert imap_login(env, "cy@acme.test", PW, src=ATTACKER)[0] == "OK"


@pytest_twisted.ensureDeferred
async def test_protocol_switches(env: dict[str, Any]) -> None:
    tok = env["token"]
    try:
        api(env, "PATCH", "/login-policy", tok, {"protocols": {
            "everyone": {"pop": False}, "departments": {"Sales": {"pop": True}},
            "members": {"eve@acme.test": {"imap": False}}}})
        assert pop_login(env, "eve@acme.test", PW).startswith("-ERR")
        assert pop_login(env, "bob@acme.test", PW).startswith("+OK")  # Sales: on
        typ, text = imap_login(env, "eve@acme.test", PW)
        assert typ == "NO" and "switched off" in text, text
        assert smtp_login(env, "eve@acme.test", PW)[0] == 535  # neither IMAP nor POP
        assert smtp_login(env, "bob@acme.test", PW)[0] == 235
        await ok(env["config"], "login-policy", "set", "--members-may-change", "off",
           "--protocol", "member:eve@acme.test:imap=default")
        assert imap_login(env, "eve@acme.test", PW)[0] == "OK"
        eve = member_token(env, "eve@acme.test")
        status, body = api(env, "PATCH", "/me/settings", eve, {"imap_enabled": False})
        assert status == 403 and "does not let members" in body["error"]["message"], body
    finally:
        api(env, "PATCH", "/login-policy", tok, {"protocols": {
            "everyone": {}, "departments": {}, "members": {}, "members_may_change": True}})
    assert pop_login(env, "eve@acme.test", PW).startswith("+OK")


@pytest_twisted.ensureDeferred
async def test_throttling_refuses_the_attacker_not_the_owner(env: dict[str, Any]) -> None:
    d: Daemon = env["daemon"]
    assert imap_login(env, "fay@acme.test", PW, src=OWNER)[0] == "OK"
    assert imap_login(env, "fay@acme.test", PW, src=SHARED_NAT)[0] == "OK"
    for n in range(3):
        typ, text = imap_login(env, "fay@acme.test", f"guess{n}", src=ATTACKER)
        assert typ == "NO" and "AUTHENTICATIONFAILED" in text, text
    # Past the limit even the right password is refused from there, on every face ...
    typ, text = imap_login(env, "fay@acme.test", PW, src=ATTACKER)
    assert typ == "NO" and "[UNAVAILABLE]" in text, text
    code, text = smtp_login(env, "fay@acme.test", PW, src=ATTACKER)
    assert code == 454 and "try again later" in text, (code, text)
    assert pop_login(env, "fay@acme.test", PW, src=ATTACKER).startswith("-ERR [SYS/TEMP]")
    # ... while the owner logs in from its usual address.
    assert imap_login(env, "fay@acme.test", PW, src=OWNER)[0] == "OK"
    # Each failure was answered later than the one before (the delay is logged).
    out = d.wait_for_log("delay=0.2")
    delays = [float(x) for x in re.findall(
        rf"user=fay@acme.test rip={ATTACKER} protocol=imap method=password "
        r"reason=wrong password delay=([\d.]+)", out)]
    assert delays == [0.05, 0.1, 0.2], delays
    # Many accounts tried from one address: that address is throttled, but an
    # account that logged in from it before still gets in with its password.
    for n in range(8):
        imap_login(env, f"nobody{n}@acme.test", "x", src=SHARED_NAT)
    assert imap_login(env, "gus@acme.test", PW, src=SHARED_NAT)[1].find("UNAVAILABLE") >= 0
    assert imap_login(env, "fay@acme.test", PW, src=SHARED_NAT)[0] == "OK"
    rows = await logins(env, "--account", "fay@acme.test", "--result", "fail")
    assert any(r[2] == ATTACKER and r[3] == "smtp" and r[6].startswith("throttled")
               for r in rows), rows
    # One greppable line per refusal: the documented fail2ban filter matches it.
    out = d.wait_for_log(f"user=gus@acme.test rip={SHARED_NAT}")
    rx = re.compile(FAILREGEX.replace("<HOST>", r"(?P<host>[\d.:a-f]+)"))
    hosts = [m.group("host") for m in rx.finditer(out)]
    assert hosts.count(ATTACKER) >= 6 and SHARED_NAT in hosts
    doc = (Path(__file__).parent.parent / "docs" / "login-security.md").read_text()
    assert FAILREGEX in doc


@pytest_twisted.ensureDeferred
async def test_login_log_queries(env: dict[str, Any]) -> None:
    tok = env["token"]
    rows = await logins(env, "--since", "2020-01-01", "--result", "ok")
    assert rows and all(r[5] == "ok" and len(r) == 7 for r in rows)
    assert await logins(env, "--since", "2999-01-01") == []
    status, body = api(env, "GET", "/logins?result=fail&ip=127.0.0.2&limit=5", tok)
    assert status == 200 and len(body["items"]) == 5 and body["next_offset"] == 5, body
    status, body = api(env, "GET", "/logins?format=csv&account=fay@acme.test", tok)
    lines = body["csv"].splitlines()
    assert lines[0] == "time,account,ip,protocol,method,client,result,reason"
    assert len(lines) > 5
    status, body = api(env, "GET", "/logins/activity?days=1&logged_in=false", tok)
    assert "ida@acme.test" in [m["address"] for m in body["items"]], body
    status, body = api(env, "GET", "/logins/activity?days=1&logged_in=true", tok)
    assert "fay@acme.test" in [m["address"] for m in body["items"]], body
    # The IMAP ID name is the client column.
    c = IMAP(env["ports"]["imap"], OWNER)
    c.xatom("ID", '("name" "Thunderbird" "version" "128")')
    c.login("hal@acme.test", PW)
    c.logout()
    status, body = api(env, "GET", "/logins?account=hal@acme.test", tok)
    assert body["items"][0]["client"] == "Thunderbird", body


@pytest_twisted.ensureDeferred
async def test_totp_second_factor_for_the_api(env: dict[str, Any]) -> None:
    from exmaild.auth.totp import code_at

    tok = env["token"]
    joe = member_token(env, "joe@acme.test")
    status, body = api(env, "POST", "/me/totp", joe)
    assert status == 201 and body["uri"].startswith("otpauth://totp/Acme:joe@acme.test?"), body
    secret = body["secret"]
    step = int(time.time()) // 30
    wrong = next(c for c in (f"{n:06d}" for n in range(10)) if c not in
                 {code_at(secret, s) for s in (step - 1, step, step + 1, step + 2)})
    assert api(env, "POST", "/me/totp/confirm", joe, {"code": wrong})[0] == 422
    status, body = api(env, "POST", "/me/totp/confirm", joe, {"code": code_at(secret, step)})
    assert status == 200 and len(body["recovery_codes"]) == 10, body
    recovery = body["recovery_codes"]

    def login(otp: str | None) -> tuple[int, Any]:
        b = {"address": "joe@acme.test", "password": PW} | ({"otp": otp} if otp else {})
        return api(env, "POST", "/me/login", body=b)

    status, body = login(None)
    assert status == 401 and "second factor" in body["error"]["message"], body
    assert login(wrong)[0] == 401
    assert login(code_at(secret, step))[0] == 401  # used to confirm: a replay
    assert login(code_at(secret, step + 1))[0] == 200
    assert login(code_at(secret, step + 1))[0] == 401  # the same code again
    assert login(recovery[0])[0] == 200
    assert login(recovery[0])[0] == 401  # recovery codes work once
    rows = [r for r in await logins(env, "--account", "joe@acme.test") if r[3] == "api-me"]
    assert [r[4] for r in rows if r[5] == "ok"][-2:] == ["password+totp", "password+recovery"]
    assert "wrong or reused second factor" in [r[6] for r in rows]
    # Enforced for administrators: an admin without a second factor cannot log in.
    assert api(env, "POST", "/admins", tok, {"address": "hal@acme.test", "role": "super"}
               )[0] == 201
    api(env, "PATCH", "/login-policy", tok, {"admin_totp": True})
    try:
        status, body = api(env, "POST", "/auth/login",
                           body={"address": "hal@acme.test", "password": PW})
        assert status == 403 and "second factor for administrators" in \
            body["error"]["message"], body
    finally:
        api(env, "PATCH", "/login-policy", tok, {"admin_totp": False})
    assert api(env, "POST", "/auth/login", body={"address": "hal@acme.test",
                                                 "password": PW})[0] == 200
    # Turning it off needs a code; every step is in the operation log.
    joe = api(env, "POST", "/me/login", body={"address": "joe@acme.test", "password": PW,
                                             "otp": recovery[1]})[1]["token"]
    assert api(env, "POST", "/me/totp/disable", joe, {"code": wrong})[0] == 403
    assert api(env, "POST", "/me/totp/disable", joe, {"code": recovery[2]})[0] == 204
    assert login(None)[0] == 200
    status, body = api(env, "GET", "/log?action=totp.", tok)
    actions = [e["action"] for e in body["items"] if e["target"] == "joe@acme.test"]
    assert actions == ["totp.disable", "totp.recovery", "totp.recovery", "totp.recovery",
                       "totp.enable"], actions


@pytest_twisted.ensureDeferred
async def test_graded_admin_sees_only_its_departments_logins(env: dict[str, Any]) -> None:
    # bob is in Sales/East: as its graded administrator with the log function it
    # sees its own logins (the API login below is one), no one else's.
    api(env, "POST", "/me/login", body={"address": "cy@acme.test", "password": "wrong"})
    await ok(env["config"], "admin", "add", "bob@acme.test", "--role", "graded",
             "--dept", "Sales/East", "--function", "log")
    status, body = api(env, "POST", "/auth/login",
                       body={"address": "bob@acme.test", "password": PW})
    assert status == 200, body
    tok = body["token"]
    status, body = api(env, "GET", "/logins?limit=500", tok)
    assert status == 200 and body["total"] >= 1, body
    assert {r["account"] for r in body["items"]} == {"bob@acme.test"}, body
    status, body = api(env, "GET", "/logins/activity?days=1&logged_in=false", tok)
    assert status == 200 and {m["address"] for m in body["items"]} <= {"bob@acme.test"}, body
    # The enterprise-wide token still sees everyone.
    status, body = api(env, "GET", "/logins?limit=500", env["token"])
    assert len({r["account"] for r in body["items"]}) > 1, body

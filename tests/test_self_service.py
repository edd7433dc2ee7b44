"""Admin password reset with "must change at next login", and member
self-service under /api/v1/me, through the real daemon: urllib for the API,
imaplib/poplib/smtplib for the protocol logins."""

from __future__ import annotations

import email
import email.header
import email.policy
import imaplib
import poplib
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, write_config
from .test_admin_api import API, PW, error_code, ok

NEW = "Fresh2024Zq"
HINT = "password must be changed"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("selfservice")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url)
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    assert "welcome\toff" in ok(config, "enterprise", "settings")  # off unless turned on
    assert "welcome\tdefault" in ok(config, "enterprise", "settings", "--welcome", "default")
    for who in ("boss", "mia", "noe", "cli"):
        ok(config, "user", "add", f"{who}@acme.test", "--password-stdin", "--name", who.title(),
           stdin=f"{PW}\n")
    ok(config, "user", "add", "lee@acme.test", "--password-stdin", "--name", "Lee Chan",
       "--nickname", "Léfty", stdin=f"{PW}\n")
    ok(config, "user", "add", "rcpt@acme.test", "--password-stdin", stdin=f"{PW}\n")
    ok(config, "alias", "add", "l.chan@acme.test", "lee@acme.test")
    acme = ok(config, "token", "create").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"api": API(ports["admin"]), "acme": acme, "ports": ports, "config": config}
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


def pop_login(port: int, user: str, pw: str) -> str:
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        pop.user(user)
        pop.pass_(pw)
    except poplib.error_proto as e:
        return e.args[0].decode()
    finally:
        pop.close()
    return "OK"


def smtp_login(port: int, user: str, pw: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as sub:
        sub.ehlo("client.test")
        try:
            sub.login(user, pw)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error.decode()
    return 235, ""


def me_login(api: API, user: str, pw: str) -> str:
    status, s = api.call("POST", "/api/v1/me/login", body={"address": user, "password": pw})
    assert status == 200, s
    return s["token"]


def test_reset_must_change_refuses_protocol_logins_until_changed(env: dict[str, Any]) -> None:
    api: API = env["api"]
    ports = env["ports"]
    user = "mia@acme.test"
    # A verified login is cached; the reset's new hash must end that too.
    assert imap_login(ports["imap"], user, PW) == "OK"
    status, mem = api.call("POST", f"/api/v1/members/{user}/password", env["acme"],
                           {"password": "Reset9876Ab"})
    assert status == 200 and mem["must_change_password"] is True
    assert "AUTHENTICATIONFAILED" in imap_login(ports["imap"], user, PW)
    # The right (reset) password: refused everywhere, saying why.
    text = imap_login(ports["imap"], user, "Reset9876Ab")
    assert "[EXPIRED]" in text and HINT in text and "/api/v1/me/password" in text, text
    text = pop_login(ports["pop3"], user, "Reset9876Ab")
    assert text.startswith("-ERR [AUTH]") and HINT in text, text
    code, text = smtp_login(ports["submission"], user, "Reset9876Ab")
    assert code == 535 and text.startswith("5.7.8") and HINT in text, text
    # A wrong password still gets the plain refusal (nothing is revealed).
    text = pop_login(ports["pop3"], user, "Wrong9876Ab")
    assert HINT not in text

    # The member logs in to /me with the reset password and sets its own.
    status, s = api.call("POST", "/api/v1/me/login",
                         body={"address": user, "password": "Reset9876Ab"})
    assert status == 200 and s["must_change_password"] is True
    tok = s["token"]
    assert error_code(api.call("POST", "/api/v1/me/password", tok,
                               {"old_password": "Nope1234Ab", "new_password": NEW})
                      ) == (403, "forbidden")
    assert error_code(api.call("POST", "/api/v1/me/password", tok,
                               {"old_password": "Reset9876Ab", "new_password": "short"})
                      ) == (422, "invalid")
    assert error_code(api.call("POST", "/api/v1/me/password", tok,
                               {"old_password": "Reset9876Ab", "new_password": "Reset9876Ab"})
                      ) == (422, "invalid")
    assert api.call("POST", "/api/v1/me/password", tok,
                    {"old_password": "Reset9876Ab", "new_password": NEW})[0] == 204
    assert imap_login(ports["imap"], user, NEW) == "OK"
    assert pop_login(ports["pop3"], user, NEW) == "OK"
    assert smtp_login(ports["submission"], user, NEW)[0] == 235
    assert "AUTHENTICATIONFAILED" in imap_login(ports["imap"], user, "Reset9876Ab")
    status, me = api.call("GET", "/api/v1/me", tok)
    assert status == 200 and me["must_change_password"] is False
    status, log = api.call("GET", "/api/v1/log?action=me.password", env["acme"])
    assert status == 200 and log["items"][0]["target"] == user


def test_cli_reset_with_must_change(env: dict[str, Any]) -> None:
    ports, config = env["ports"], env["config"]
    user = "cli@acme.test"
    assert smtp_login(ports["submission"], user, PW)[0] == 235
    ok(config, "user", "passwd", user, "--must-change", "--password-stdin",
       stdin="Kx4Reset99z\n")
    code, text = smtp_login(ports["submission"], user, "Kx4Reset99z")
    assert (code, text[:5]) == (535, "5.7.8") and HINT in text, text
    # A plain passwd (no --must-change) lifts it.
    ok(config, "user", "passwd", user, "--password-stdin", stdin="Kx5Reset99z\n")
    assert smtp_login(ports["submission"], user, "Kx5Reset99z")[0] == 235


def test_member_self_service(env: dict[str, Any]) -> None:
    api: API = env["api"]
    ports = env["ports"]
    user = "noe@acme.test"
    assert error_code(api.call("POST", "/api/v1/me/login",
                               body={"address": user, "password": "Wrong1234x"})
                      ) == (401, "unauthorized")
    tok = me_login(api, user, PW)
    status, me = api.call("GET", "/api/v1/me", tok)
    assert status == 200 and me["address"] == user and me["name"] == "Noe"
    assert me["settings"]["save_sent"] is True and me["nickname_changeable"] is True
    # Only its own: admin routes and other members are out of reach ...
    assert error_code(api.call("GET", "/api/v1/members", tok)) == (403, "forbidden")
    assert error_code(api.call("GET", "/api/v1/members/boss@acme.test", tok)
                      ) == (403, "forbidden")
    assert error_code(api.call("PATCH", "/api/v1/enterprise/settings", tok,
                               {"members_may_change_nickname": True})) == (403, "forbidden")
    # ... and /me is not for admin credentials.
    assert error_code(api.call("GET", "/api/v1/me", env["acme"])) == (403, "forbidden")
    assert error_code(api.call("GET", "/api/v1/me")) == (401, "unauthorized")

    status, me = api.call("PATCH", "/api/v1/me", tok, {"nickname": "Noodle"})
    assert status == 200 and me["nickname"] == "Noodle"
    assert error_code(api.call("PATCH", "/api/v1/me", tok, {"name": "Boss"})) == (422, "invalid")
    status, es = api.call("PATCH", "/api/v1/enterprise/settings", env["acme"],
                          {"members_may_change_nickname": False})
    assert status == 200 and es["members_may_change_nickname"] is False
    assert error_code(api.call("PATCH", "/api/v1/me", tok, {"nickname": "Other"})
                      ) == (403, "forbidden")
    assert api.call("GET", "/api/v1/me", tok)[1]["nickname"] == "Noodle"
    api.call("PATCH", "/api/v1/enterprise/settings", env["acme"],
             {"members_may_change_nickname": True})

    # Client settings: switching POP off takes effect on the running daemon.
    assert pop_login(ports["pop3"], user, PW) == "OK"
    status, st = api.call("PATCH", "/api/v1/me/settings", tok,
                          {"pop_enabled": False, "save_sent": False})
    assert status == 200 and st["pop_enabled"] is False and st["save_sent"] is False
    assert st["imap_enabled"] is True
    assert "switched off" in pop_login(ports["pop3"], user, PW)
    assert error_code(api.call("PATCH", "/api/v1/me/settings", tok,
                               {"fetch_window": "5y"})) == (422, "invalid")
    assert error_code(api.call("PATCH", "/api/v1/me/settings", tok,
                               {"nope": True})) == (422, "invalid")
    assert api.call("GET", "/api/v1/me/settings", tok)[1]["pop_enabled"] is False
    api.call("PATCH", "/api/v1/me/settings", tok, {"pop_enabled": True})
    assert pop_login(ports["pop3"], user, PW) == "OK"

    # A disabled member's session stops working; logout ends it.
    tok2 = me_login(api, user, PW)
    assert api.call("DELETE", "/api/v1/auth/session", tok2)[0] == 204
    assert error_code(api.call("GET", "/api/v1/me", tok2)) == (401, "unauthorized")
    assert api.call("POST", f"/api/v1/members/{user}/disable", env["acme"])[0] == 200
    assert error_code(api.call("GET", "/api/v1/me", tok)) == (401, "unauthorized")
    api.call("POST", f"/api/v1/members/{user}/enable", env["acme"])

    status, doc = api.call("GET", "/api/v1/openapi.json")
    for path in ("/api/v1/me", "/api/v1/me/login", "/api/v1/me/password",
                 "/api/v1/me/settings", "/api/v1/members/{address}/password",
                 "/api/v1/enterprise/settings"):
        assert path in doc["paths"], path


def _inbox_froms(port: int) -> list[tuple[str, bytes]]:
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login("rcpt@acme.test", PW)
    imap.select("INBOX")
    out = []
    for num in imap.search(None, "ALL")[1][0].split():
        raw = imap.fetch(num, "(BODY.PEEK[])")[1][0][1]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        out.append((str(msg["Subject"]), raw))
    imap.logout()
    return out


def test_display_name_policy_sets_from_of_submitted_mail(env: dict[str, Any]) -> None:
    api: API = env["api"]
    ports = env["ports"]
    body = b"x" * 998 + b"\r\n"
    big = body * 2000  # ~2 MB: the body must arrive unchanged
    cases = [
        ("name", "Someone Else <lee@acme.test>", "Lee Chan", "lee@acme.test"),
        ("nickname", "lee@acme.test", "Léfty", "lee@acme.test"),
        ("name(nickname)", '"Old" <l.chan@acme.test>', "Lee Chan(Léfty)", "l.chan@acme.test"),
        ("nickname(name)", "Old\r\n  Name <LEE@acme.test>", "Léfty(Lee Chan)",
         "LEE@acme.test"),
        # Not the member's own address: left as it is.
        ("name", "Boss <boss@acme.test>", "Boss", "boss@acme.test"),
    ]
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as sub:
        sub.ehlo("client.test")
        sub.login("lee@acme.test", PW)
        for i, (policy, from_field, _, _) in enumerate(cases):
            status, es = api.call("PATCH", "/api/v1/enterprise/settings", env["acme"],
                                  {"display_name": policy})
            assert status == 200 and es["display_name"] == policy
            msg = (f"From: {from_field}\r\nTo: rcpt@acme.test\r\nSubject: case {i}\r\n"
                   "\r\n").encode() + (big if i == 0 else b"hello\r\n")
            sub.sendmail("lee@acme.test", ["rcpt@acme.test"], msg)
    got = dict(_inbox_froms(ports["imap"]))
    for i, (_, _, name, addr) in enumerate(cases):
        raw = got[f"case {i}"]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        froms = msg.get_all("From")
        assert len(froms) == 1, raw[:500]
        assert froms[0].addresses[0].display_name == name, froms[0]
        assert froms[0].addresses[0].addr_spec == addr, froms[0]
        assert msg["Subject"] == f"case {i}" and msg["To"] == "rcpt@acme.test"
    assert got["case 0"].endswith(b"\r\n\r\n" + big)
    api.call("PATCH", "/api/v1/enterprise/settings", env["acme"], {"display_name": "name"})


def _inbox(port: int, user: str) -> list[email.message.EmailMessage]:
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(user, PW)
    imap.select("INBOX")
    out = []
    for num in imap.search(None, "ALL")[1][0].split():
        raw = imap.fetch(num, "(BODY.PEEK[])")[1][0][1]
        out.append(email.message_from_bytes(raw, policy=email.policy.default))
    imap.logout()
    return out


def test_welcome_letter(env: dict[str, Any]) -> None:
    api: API = env["api"]
    port, config = env["ports"]["imap"], env["config"]
    # The default letter, ingested by the CLI process that made the member.
    msgs = _inbox(port, "boss@acme.test")
    welcome = [m for m in msgs if m["Subject"] == "Welcome to Acme"]
    assert len(welcome) == 1
    assert "boss@acme.test" in welcome[0].get_content()
    assert welcome[0]["To"].addresses[0].addr_spec == "boss@acme.test"

    # The enterprise's template, for a member made through the API (the daemon ingests).
    assert error_code(api.call("PATCH", "/api/v1/enterprise/settings", env["acme"],
                               {"welcome": "template", "welcome_template": "  "})
                      ) == (422, "invalid")
    tpl = "Subject: Hi {name} from {enterprise}\nDear {nickname}, you are {address}. {x} stays.\n"
    status, es = api.call("PATCH", "/api/v1/enterprise/settings", env["acme"],
                          {"welcome": "template", "welcome_template": tpl})
    assert status == 200 and es["welcome"] == "template"
    status, _ = api.call("POST", "/api/v1/members", env["acme"],
                         {"address": "tina@acme.test", "password": PW, "name": "Tína T",
                          "nickname": "TT"})
    assert status == 201
    msgs = _inbox(port, "tina@acme.test")
    assert [m["Subject"] for m in msgs] == ["Hi Tína T from Acme"]
    assert msgs[0].get_content().strip() == "Dear TT, you are tina@acme.test. {x} stays."

    # Off: no letter; the CLI's own ingest path again for the default one.
    api.call("PATCH", "/api/v1/enterprise/settings", env["acme"], {"welcome": "off"})
    ok(config, "user", "add", "zed@acme.test", "--password-stdin", stdin=f"{PW}\n")
    assert _inbox(port, "zed@acme.test") == []
    api.call("PATCH", "/api/v1/enterprise/settings", env["acme"], {"welcome": "default"})
    ok(config, "user", "add", "yan@acme.test", "--password-stdin", stdin=f"{PW}\n")
    assert [m["Subject"] for m in _inbox(port, "yan@acme.test")] == ["Welcome to Acme"]


def test_enterprise_mailauth_policy_via_api(env: dict[str, Any]) -> None:
    # exmaild/mailauth/entpolicy.py: the [mailauth] actions per enterprise; null: the server's.
    api, tok = env["api"], env["acme"]
    status, es = api.call("PATCH", "/api/v1/enterprise/settings", tok,
                          {"dmarc_reject_action": "junk", "impersonation_action": "mark"})
    assert status == 200, es
    assert es["dmarc_reject_action"] == "junk" and es["impersonation_action"] == "mark"
    assert es["spf_fail_action"] is None and es["dmarc_quarantine_action"] is None
    assert error_code(api.call("PATCH", "/api/v1/enterprise/settings", tok,
                               {"spf_fail_action": "bounce"})) == (422, "invalid")
    status, es = api.call("PATCH", "/api/v1/enterprise/settings", tok,
                          {"dmarc_reject_action": None, "impersonation_action": None})
    assert status == 200 and es["dmarc_reject_action"] is None
    assert api.call("GET", "/api/v1/enterprise/settings", tok)[1]["impersonation_action"] is None

"""The faces of issue 13's later parts through the real daemon: send rules
and date/attachment conditions over /me/rules (and ManageSieve), vacation's
known_only, and the admin's per-member forwarding policy (API and exmailctl)."""

from __future__ import annotations

from typing import Any

from .test_admin_api import error_code, ok
from .test_rules_api import BOB, env, getscript, putscript  # noqa: F401 (env: the fixture)

CID = "cid@acme.test"


def test_send_rules_and_new_conditions_through_the_api(env: dict[str, Any]) -> None:  # noqa: F811
    api, tok, ports = env["api"], env["me"][CID], env["ports"]
    send_rule = {"name": "to boss", "kind": "send",
                 "conditions": [{"field": "to", "op": "contains", "value": "boss@"},
                                {"field": "attachment", "op": "matches", "value": "*.pdf"}],
                 "actions": [{"type": "tag", "value": "$Boss"}]}
    receive = {"name": "weekend",
               "conditions": [{"field": "weekday", "op": "is", "value": [0, 6]},
                              {"field": "date", "op": "after", "value": "2026-01-01"},
                              {"field": "time", "op": "between", "value": ["18:00", "08:00"]}],
               "actions": [{"type": "mark_read"}]}
    assert error_code(api.call("POST", "/api/v1/me/rules", tok, {
        **send_rule, "actions": [{"type": "forward", "value": ["x@y.test"]}]})) == (
        422, "invalid")
    assert error_code(api.call("POST", "/api/v1/me/rules", tok, {
        **receive, "conditions": [{"field": "weekday", "op": "is", "value": [9]}]})) == (
        422, "invalid")
    status, got = api.call("POST", "/api/v1/me/rules", tok, send_rule)
    assert status == 201 and got["kind"] == "send" and got["number"] == 1, got
    status, got = api.call("POST", "/api/v1/me/rules", tok, receive)
    # Receive rules come first, then send rules.
    assert status == 201 and got["number"] == 1, got
    items = api.call("GET", "/api/v1/me/rules", tok)[1]["items"]
    assert [(r["name"], r.get("kind", "receive"), r["custom"]) for r in items] == [
        ("weekend", "receive", False), ("to boss", "send", False)]
    # The send rules are their own (inactive) script, readable over ManageSieve.
    text = getscript(ports["managesieve"], CID, "exmail-send-rules")
    assert '"to boss"' in text and 'header :mime :anychild :param' in text
    assert '"weekend"' not in text
    assert 'currentdate :is "weekday" ["0", "6"]' in getscript(
        ports["managesieve"], CID, "exmail-rules")
    # The auto-reply's known_only.
    status, vac = api.call("PUT", "/api/v1/me/vacation", tok,
                           {"text": "Away.", "known_only": True})
    assert status == 200 and vac["known_only"] is True, vac
    assert 'vacation :days 1 :known "Away.";' in getscript(ports["managesieve"], CID,
                                                           "exmail-rules")
    # An edit over ManageSieve shows in the API (as custom: read only).
    edited = text.replace('addflag "$Boss";', 'addflag "$Chief";')
    assert putscript(ports["managesieve"], CID, "exmail-send-rules", edited)[-1].startswith(
        b"OK")
    items = api.call("GET", "/api/v1/me/rules", tok)[1]["items"]
    assert [r["custom"] for r in items] == [False, True]
    status, body = api.call("PATCH", "/api/v1/me/rules/2", tok, {"enabled": False})
    assert status == 409 and "exmail-send-rules" in body["error"]["message"], body


def test_member_forwarding_policy_through_the_api(env: dict[str, Any]) -> None:  # noqa: F811
    api, tok = env["api"], env["acme"]
    path = f"/api/v1/members/{BOB}/forwarding"
    assert api.call("GET", path, tok)[1] == {"address": BOB, "forward_outside": None,
                                             "effective": True}
    status, got = api.call("PUT", path, tok, {"forward_outside": False})
    assert status == 200 and got == {"address": BOB, "forward_outside": False,
                                     "effective": False}
    assert error_code(api.call("PUT", path, tok, {"forward_outside": "no"}))[0] == 422
    assert api.call("GET", path, env["me"][BOB])[0] == 403  # a member's own session: no
    assert api.call("GET", f"/api/v1/members/{BOB}/forwarding", env["globex"])[0] == 404
    out = ok(env["config"], "user", "set", BOB, "--forward-outside", "default")
    assert "the enterprise setting" in out and "allowed" in out
    assert api.call("GET", path, tok)[1]["forward_outside"] is None
    ok(env["config"], "user", "set", BOB, "--forward-outside", "no", "--secure-login", "off")
    assert api.call("GET", path, tok)[1]["effective"] is False

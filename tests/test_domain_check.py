"""Domain "check resolution" through the CLI and the API against a test
nameserver on 127.0.0.1 (dnspython answers, a thread serves them)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config
from .test_admin_api import API, ok


class LoopbackDNS:
    """UDP nameserver: `records[(name, type)]`; names in `servfail` get
    SERVFAIL, in `drop` no answer at all; others NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            question = q.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            if name in self.drop:
                continue
            resp = dns.message.make_response(q)
            resp.flags |= dns.flags.RA
            if name in self.servfail:
                resp.set_rcode(dns.rcode.SERVFAIL)
            elif not any(n == name for n, _ in self.records):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            elif self.records.get((name, rdtype)):
                resp.answer.append(dns.rrset.from_text_list(
                    question.name, 0, "IN", rdtype, self.records[(name, rdtype)]))
            self.sock.sendto(resp.to_wire(), peer)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dnscheck")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    ns = LoopbackDNS()
    config, ports = write_config(tmp, db_url, queue={
        "dns_servers": [f"127.0.0.1:{ns.port}"], "dns_timeout": 2.0})
    ok(config, "enterprise", "add", "Acme")
    for d in ("good.test", "fresh.test", "away.test", "broken.test", "silent.test", "gone.test"):
        ok(config, "domain", "add", d)
    token = ok(config, "token", "create").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"api": API(ports["admin"]), "token": token, "config": config, "ns": ns}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def fields(text: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("\t") for line in text.splitlines())}


def test_check_resolution(env: dict[str, Any]) -> None:
    api, ns, config, tok = env["api"], env["ns"], env["config"], env["token"]
    status, r = api.call("GET", "/api/v1/domains/fresh.test/check", tok)
    assert status == 200 and r["status"] == "no_domain", r
    want = r["required"]
    assert want["txt"].startswith("exmaild-verify=") and want["mx"][0].startswith("10 ")
    mx_host = want["mx"][0].split()[1]
    # Nothing set yet: pending, and the token stays the same between checks.
    ns.records[("fresh.test", "A")] = ["192.0.2.1"]
    status, r2 = api.call("GET", "/api/v1/domains/fresh.test/check", tok)
    assert r2["status"] == "pending" and r2["required"] == want, r2
    assert r2["found"] == {**r2["found"], "mx": [], "spf": [], "token": False}

    # MX, SPF and the token set: verified (the CLI shows the same).
    good = api.call("GET", "/api/v1/domains/good.test/check", tok)[1]["required"]
    ns.records[("good.test", "MX")] = [f"10 {mx_host}"]
    ns.records[("good.test", "TXT")] = [f'"{good["spf"]}"', f'"{good["txt"]}"']
    status, r = api.call("GET", "/api/v1/domains/good.test/check", tok)
    assert r["status"] == "verified" and r["found"]["token"] and r["found"]["spf_ok"], r
    out = fields(ok(config, "domain", "check", "good.test"))
    assert out["status"] == "verified" and out["token found"] == "yes"
    assert out["token to set"] == f'good.test TXT "{good["txt"]}"'

    # MX at another provider.
    ns.records[("away.test", "MX")] = ["10 mx.elsewhere.example."]
    assert api.call("GET", "/api/v1/domains/away.test/check", tok)[1]["status"] == "mx_elsewhere"
    out = fields(ok(config, "domain", "check", "away.test"))
    assert out["status"] == "mx_elsewhere" and out["mx found"] == "10 mx.elsewhere.example."

    # SERVFAIL and no answer at all: a clear status, not a hang.
    ns.servfail.add("broken.test")
    r = api.call("GET", "/api/v1/domains/broken.test/check", tok)[1]
    assert r["status"] == "dns_error" and "SERVFAIL" in r["error"], r
    ns.drop.add("silent.test")
    r = api.call("GET", "/api/v1/domains/silent.test/check", tok)[1]
    assert r["status"] == "dns_error" and "timed out" in r["error"], r
    out = fields(ok(config, "domain", "check", "silent.test"))
    assert out["status"].startswith("dns_error")

    # Not this enterprise's domain (or none at all): 404 / a one-line CLI error.
    assert api.call("GET", "/api/v1/domains/nowhere.test/check", tok)[0] == 404
    res = exmailctl(config, "domain", "check", "nowhere.test")
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1


def test_check_mail_auth_state(env: dict[str, Any]) -> None:
    api, ns, config, tok = env["api"], env["ns"], env["config"], env["token"]
    ns.records[("gone.test", "A")] = ["192.0.2.1"]
    r = api.call("GET", "/api/v1/domains/gone.test/check", tok)[1]
    assert r["auth"]["dkim"] == {"status": "no_key", "selectors": []}, r
    assert r["auth"]["spf"]["status"] == "missing"
    assert r["auth"]["dmarc"]["status"] == "missing"

    # A key generated, its record published as printed: ok; SPF naming us; DMARC.
    line = ok(config, "dkim", "generate", "gone.test").strip()
    name, _, _, value = line.split(" ", 3)
    ns.records[(name.rstrip(".").lower(), "TXT")] = [value]
    mx_host = r["required"]["mx"][0].split()[1].rstrip(".")
    ns.records[("gone.test", "TXT")] = [f'"v=spf1 include:{mx_host} -all"']
    ns.records[("_dmarc.gone.test", "TXT")] = ['"v=DMARC1; p=quarantine; rua=mailto:d@gone.test"']
    r = api.call("GET", "/api/v1/domains/gone.test/check", tok)[1]
    assert r["auth"]["dkim"]["status"] == "ok", r
    assert r["auth"]["dkim"]["selectors"] == [
        {"selector": "s1", "algorithm": "rsa", "state": "active", "status": "ok"}]
    assert r["auth"]["spf"] == {"status": "ok", "record": f"v=spf1 include:{mx_host} -all"}
    assert r["auth"]["dmarc"]["status"] == "found" and r["auth"]["dmarc"]["policy"] == "quarantine"
    out = fields(ok(config, "domain", "check", "gone.test"))
    assert out["dkim"].startswith("ok") and out["spf"] == "ok"
    assert out["dmarc"] == "found\tp=quarantine"

    # A rotated key not yet published: mismatch; SPF of another provider: not_us;
    # the DMARC name failing: dns_error, and the call still answers.
    ok(config, "dkim", "generate", "gone.test", "--selector", "s1x")
    ns.records[("s1x._domainkey.gone.test", "TXT")] = [value]  # the old key
    ns.records[("gone.test", "TXT")] = ['"v=spf1 include:spf.elsewhere.example -all"']
    ns.servfail.add("_dmarc.gone.test")
    r = api.call("GET", "/api/v1/domains/gone.test/check", tok)[1]
    assert r["auth"]["dkim"]["status"] == "mismatch", r
    assert r["auth"]["spf"]["status"] == "not_us"
    assert r["auth"]["dmarc"]["status"] == "dns_error"

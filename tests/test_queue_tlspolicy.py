"""MTA-STS (RFC 8461), DANE (RFC 7672) and TLS-RPT counts in outbound
delivery, end to end on 127.0.0.1: the queue runner with the real store,
answers from a test DNS server (TXT `_mta-sts`, A of `mta-sts.<domain>`,
TLSA with the AD bit), the policy served over HTTPS by a twisted.web
server, and a scriptable SMTP server with or without STARTTLS."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import pytest_twisted
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import reactor, ssl
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import resource, server

from exmaild.config import Config
from exmaild.queue import tlsrpt
from exmaild.store import model as m
from exmaild.store.connector import Store
from exmaild.tls import make_self_signed

from .queuelab import Behaviour, FakeDNS, FakeSMTP, queue_mail, statuses
from .test_queue_delivery import Lab, lab, runner_factory  # noqa: F401  (fixtures)

POLICY = "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


class SecureDNS(FakeDNS):
    """FakeDNS that sets AD (DNSSEC-validated) on answers for `secure` names,
    as a validating resolver would."""

    def __init__(self) -> None:
        super().__init__()
        self.secure: set[str] = set()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        q = dns.message.from_wire(data)
        name = q.question[0].name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        self.queries.append((name, rdtype))
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.RA
        if name in self.secure:
            resp.flags |= dns.flags.AD
        if name not in self.records:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        elif self.records[name].get(rdtype):
            resp.answer.append(dns.rrset.from_text_list(q.question[0].name, 0, "IN", rdtype,
                                                        self.records[name][rdtype]))
        self.transport.write(resp.to_wire(), addr)


class PolicyResource(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = ""
        self.ctype = b"text/plain"
        self.fetches = 0

    def render_GET(self, request: Any) -> bytes:
        self.fetches += 1
        if request.path != b"/.well-known/mta-sts.txt" or not self.body:
            request.setResponseCode(404)
            return b"no policy"
        request.setHeader(b"Content-Type", self.ctype)
        return self.body.encode()


def tls_options(cert: Path, key: Path) -> Any:
    return ssl.CertificateOptions(
        privateKey=load_pem_private_key(key.read_bytes(), None),
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()))


class Env:
    """Certificates (their bundle is the trust store), the policy server and
    the DNS records that point at it."""

    def __init__(self, tmp: Path, the_lab: Lab) -> None:
        self.lab = the_lab
        self.certs: dict[str, tuple[Path, Path]] = {}
        for name in ("mx.remote.test", "mta-sts.remote.test", "wrong.test"):
            c, k = tmp / f"{name}.crt", tmp / f"{name}.key"
            make_self_signed(c, k, name)
            self.certs[name] = (c, k)
        self.ca = tmp / "ca.pem"
        self.ca.write_bytes(b"".join(self.certs[n][0].read_bytes()
                                     for n in ("mx.remote.test", "mta-sts.remote.test")))
        self.policy = PolicyResource()
        port = reactor.listenSSL(0, server.Site(self.policy),
                                 tls_options(*self.certs["mta-sts.remote.test"]),
                                 interface="127.0.0.1")
        the_lab.ports.append(port)
        self.https_port = port.getHost().port
        the_lab.dns.add("mta-sts.remote.test", "A", "127.0.0.1")

    def publish(self, mode: str, mx: str = "mx.remote.test", pid: str = "1") -> None:
        self.policy.body = POLICY.format(mode=mode, mx=mx)
        self.lab.dns.records.setdefault("_mta-sts.remote.test", {})["TXT"] = [
            f'"v=STSv1; id={pid}"']

    def smtp(self, cert: str | None = "mx.remote.test") -> FakeSMTP:
        return self.lab.smtp(Behaviour(tls=tls_options(*self.certs[cert]) if cert else None))

    def spki_sha256(self, name: str) -> str:
        cert = x509.load_pem_x509_certificate(self.certs[name][0].read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()


@pytest.fixture
def env(tmp_path: Path, lab: Lab) -> Env:  # noqa: F811
    return Env(tmp_path, lab)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def sts_runner(runner_factory: Any, env: Env, port: int, **kw: Any) -> Any:  # noqa: F811
    return await runner_factory(port, mta_sts=True, mta_sts_port=env.https_port,
                                tls_ca_file=str(env.ca), **kw)


async def send(store: Store, runner: Any, subject: str) -> tuple[str, str]:
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
    await runner.run_once()
    status, reply = statuses(store, qid)["bob@remote.test"]
    return status, reply or ""


def counts(store: Store) -> dict[tuple[str, str, str], int]:
    t = m.tls_report_counts
    with store.engine.connect() as c:
        return {(r.policy_type, r.mx_host, r.result): r.count
                for r in c.execute(sa.select(t)).all()}


@pytest_twisted.ensureDeferred
async def test_enforce_with_a_good_certificate_delivers_over_tls(
    store: Store, env: Env, runner_factory: Any  # noqa: F811
) -> None:
    env.publish("enforce")
    srv = env.smtp()
    runner = await sts_runner(runner_factory, env, srv.port)
    assert await send(store, runner, "one") == ("sent", "250 2.0.0 Ok: queued as TEST")
    assert [t.tls for t in srv.txns] == [True]
    with store.engine.connect() as c:
        row = c.execute(sa.select(m.mta_sts_policies)).one()
    assert (row.domain, row.policy_id, row.mode, row.mx, row.max_age) == (
        "remote.test", "1", "enforce", "mx.remote.test", 86400)
    assert row.expires >= int(time.time()) + 86000
    # The same id: the cached policy, no second fetch.
    assert (await send(store, runner, "two"))[0] == "sent"
    assert env.policy.fetches == 1
    # The cached policy outlives the TXT record and the policy server, and a
    # server that stops offering STARTTLS gets nothing: deferred.
    del env.lab.dns.records["_mta-sts.remote.test"]
    env.policy.body = ""
    plain = env.smtp(cert=None)
    runner2 = await sts_runner(runner_factory, env, plain.port, node="node2")
    runner.stopService()
    status, reply = await send(store, runner2, "three")
    assert status == "deferred" and "MTA-STS policy of remote.test (enforce)" in reply
    assert "TLS is required" in reply and plain.txns == []
    got = counts(store)
    assert got[("sts", "mx.remote.test", "success")] == 2
    assert got[("sts", "mx.remote.test", "starttls-not-supported")] == 1
    # Once max_age has run out (and no TXT record says otherwise) the policy is gone.
    with store.engine.begin() as c:
        c.execute(m.mta_sts_policies.update().values(expires=int(time.time()) - 1))
    assert (await send(store, runner2, "four"))[0] == "sent"
    assert [t.tls for t in plain.txns] == [False]


@pytest.mark.parametrize("case", ["mx-mismatch", "no-starttls", "bad-certificate"])
@pytest_twisted.ensureDeferred
async def test_enforce_failures_defer_and_never_send_in_clear(
    store: Store, env: Env, runner_factory: Any, case: str  # noqa: F811
) -> None:
    env.publish("enforce", mx="*.other.test" if case == "mx-mismatch" else "mx.remote.test")
    srv = env.smtp(cert={"no-starttls": None, "bad-certificate": "wrong.test"}.get(
        case, "mx.remote.test"))
    runner = await sts_runner(runner_factory, env, srv.port)
    status, reply = await send(store, runner, case)
    assert status == "deferred", reply
    assert reply.startswith("MTA-STS policy of remote.test (enforce): ")
    assert srv.txns == []  # nothing was sent, in clear or otherwise
    if case == "mx-mismatch":
        assert "MX host mx.remote.test is not one of mx: *.other.test" in reply
        assert srv.connections == 0
    elif case == "no-starttls":
        assert "TLS is required" in reply
    else:
        assert "handshake" in reply
    # The policy allows the MX again (a new id): fetched anew, delivered.
    env.publish("enforce", mx="*.remote.test", pid="2")
    good = env.smtp()
    runner.stopService()
    runner = await sts_runner(runner_factory, env, good.port, node="node2")
    assert (await send(store, runner, "again"))[0] == "sent"
    assert good.txns[0].tls and env.policy.fetches == 2


@pytest_twisted.ensureDeferred
async def test_testing_mode_logs_and_delivers(
    store: Store, env: Env, runner_factory: Any, warnings: list[str]  # noqa: F811
) -> None:
    env.publish("testing")
    srv = env.smtp(cert="wrong.test")
    runner = await sts_runner(runner_factory, env, srv.port)
    assert (await send(store, runner, "t"))[0] == "sent"
    assert srv.txns[0].tls  # opportunistic TLS after the verified attempt failed
    assert any("MTA-STS policy of remote.test (testing)" in w and "testing mode, delivering"
               in w for w in warnings), warnings
    assert counts(store)[("sts", "mx.remote.test", "certificate-not-trusted")] == 1


@pytest.mark.parametrize("published", ["absent", "none", "fetch-fails", "not-text-plain"])
@pytest_twisted.ensureDeferred
async def test_no_policy_is_opportunistic_as_before(
    store: Store, env: Env, runner_factory: Any, published: str  # noqa: F811
) -> None:
    if published == "none":
        env.publish("none")
    elif published == "fetch-fails":
        env.publish("enforce")
        env.policy.body = ""  # 404: no policy learnt, nothing cached
    elif published == "not-text-plain":
        env.publish("enforce")
        env.policy.ctype = b"text/html"
    srv = env.smtp(cert=None)  # no STARTTLS at all
    runner = await sts_runner(runner_factory, env, srv.port)
    assert (await send(store, runner, published))[0] == "sent"
    assert srv.txns[0].tls is False
    with store.engine.connect() as c:  # a `none` policy is learnt too (it ends an old one)
        modes = list(c.execute(sa.select(m.mta_sts_policies.c.mode)).scalars())
    assert modes == (["none"] if published == "none" else [])


# -- DANE ----------------------------------------------------------------------------------------
@pytest.fixture
def secure_lab(tmp_path: Path) -> Iterator[Lab]:
    sl = Lab(tmp_path)
    sl.ports[0].stopListening()
    sl.dns = SecureDNS()
    sl.ports[0] = sl.dns.listen()
    sl.dns.mx("remote.test", (10, "mx.remote.test"), a={"mx.remote.test": "127.0.0.1"})
    yield sl
    sl.close()


@pytest.mark.parametrize("record", ["match", "mismatch", "insecure"])
@pytest_twisted.ensureDeferred
async def test_dane_tlsa(store: Store, cfg: Config, secure_lab: Lab, tmp_path: Path,
                         record: str) -> None:
    import dataclasses

    from exmaild.config import QueueConfig, ServerConfig
    from exmaild.queue.runner import QueueRunner

    env = Env(tmp_path, secure_lab)
    srv = env.smtp(cert="wrong.test")  # no name or CA would accept it: DANE-EE does not care
    digest = env.spki_sha256("wrong.test") if record != "mismatch" else "00" * 32
    tlsa = f"_{srv.port}._tcp.mx.remote.test"
    secure_lab.dns.add(tlsa, "TLSA", f"3 1 1 {digest}")
    if record != "insecure":
        secure_lab.dns.secure.add(tlsa)
    q = QueueConfig(retry_schedule=(300,), scan_interval=3600.0, connect_timeout=2.0,
                    command_timeout=5.0, dns_servers=(secure_lab.dns.server,), dns_timeout=1.0,
                    helo_name="client.example.test", remote_port=srv.port, dane=True,
                    dns_trust_ad=True)
    runner = QueueRunner(dataclasses.replace(cfg, queue=q,
                                             server=ServerConfig("mx.example.test", "n1")),
                         store, reactor)
    runner.startService()
    try:
        await runner.run_once()
        status, reply = await send(store, runner, record)
    finally:
        runner.stopService()
    if record == "mismatch":
        assert status == "deferred" and srv.txns == []
        assert "DANE TLSA of mx.remote.test: no TLSA record matches" in reply
        assert counts(store)[("tlsa", "mx.remote.test", "validation-failure")] == 1
    else:
        assert status == "sent" and srv.txns[0].tls
        kind = "tlsa" if record == "match" else "no-policy-found"
        assert counts(store)[(kind, "mx.remote.test", "success")] == 1
    assert (tlsa, "TLSA") in secure_lab.dns.queries


# -- TLS-RPT ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_tlsrpt_report(store: Store, cfg: Config, tmp_path: Path) -> None:
    day = tlsrpt.today()
    for args in (("sts", "mx1.remote.test", "success"), ("sts", "mx1.remote.test", "success"),
                 ("sts", "mx2.remote.test", "certificate-not-trusted")):
        await tlsrpt.count(store, "Remote.TEST", *args)
    with store.engine.connect() as c:
        rep = json.loads(tlsrpt.report_json(c, "remote.test", day, "mx.example.test"))
    assert rep["date-range"] == {"start-datetime": f"{day}T00:00:00Z",
                                 "end-datetime": f"{day}T23:59:59Z"}
    [p] = rep["policies"]
    assert p["policy"]["policy-type"] == "sts"
    assert p["summary"] == {"total-successful-session-count": 2,
                            "total-failure-session-count": 1}
    assert p["failure-details"] == [{"result-type": "certificate-not-trusted",
                                     "receiving-mx-hostname": "mx2.remote.test",
                                     "failed-session-count": 1}]
    # exmailctl prints the same report; a malformed day is refused.
    from twisted.internet import threads

    from .daemon import exmailctl, write_config

    config, _ = write_config(tmp_path, db_url=cfg.database.url)
    r = await threads.deferToThread(exmailctl, config, "tlsrpt", "report", "remote.test",
                                    "--day", day)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == rep
    assert rep["contact-info"] == "postmaster@mx.example.test"
    r = await threads.deferToThread(exmailctl, config, "tlsrpt", "report", "remote.test",
                                    "--day", "2026-13-01")
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr


# -- parsing and matching --------------------------------------------------------------------
def test_policy_parsing_and_mx_patterns() -> None:
    from exmaild.queue.mtasts import Policy, PolicyError, parse_policy, txt_id

    assert txt_id(["v=STSv1; id=20261202T1"]) == "20261202T1"
    assert txt_id(["v=spf1 -all", "v=STSv1;id=abc;"]) == "abc"
    for bad in ([], ["v=STSv1; id=a", "v=STSv1; id=b"], ["v=STSv1; id=a-b"], ["v=STSv2; id=1"],
                ["v=STSv1"], None):
        assert txt_id(bad) is None, bad
    text = ("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\n"
            "max_age: 604800\n")
    assert parse_policy(text) == ("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert parse_policy("version: STSv1\r\nmode: none\r\nmax_age: 9999999999\r\n")[2] == 31557600
    for bad in ("mode: enforce\nmx: a\nmax_age: 1", "version: STSv1\nmode: on\nmx: a\nmax_age: 1",
                "version: STSv1\nmode: enforce\nmax_age: 1",
                "version: STSv1\nmode: testing\nmx: a\nmax_age: -1"):
        with pytest.raises(PolicyError):
            parse_policy(bad)
    p = Policy("example.net", "1", "enforce", ("mail.example.com", "*.example.net"), 1, 0)
    assert p.matches("MAIL.example.com.") and p.matches("mx1.example.net")
    assert not p.matches("example.net") and not p.matches("a.b.example.net")
    assert not p.matches("mail.example.com.evil.test")


def test_dane_ta_and_ee_records(tmp_path: Path) -> None:
    """DANE-TA (2 0 1) needs the issuer in the chain and the MX name on the
    certificate; DANE-EE (3 1 1) only the key; PKIX usages are unusable."""
    import datetime

    import dns.rdata
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from OpenSSL import crypto

    from exmaild.queue import dane

    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(
            x509.oid.NameOID.COMMON_NAME, name)])).issuer_name(x509.Name([x509.NameAttribute(
                x509.oid.NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = cert("Test CA", ca_key, "Test CA", ca_key, True)
    leaf = cert("mx.remote.test", leaf_key, "Test CA", ca_key, False)
    chain = [crypto.X509.from_cryptography(leaf), crypto.X509.from_cryptography(ca)]

    def tlsa(text: str) -> Any:
        return dns.rdata.from_text("IN", "TLSA", text)

    ca_digest = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert dane.check([tlsa(f"2 0 1 {ca_digest}")], chain, "mx.remote.test") is None
    assert dane.check([tlsa(f"2 0 1 {ca_digest}")], chain, "other.remote.test") is not None
    assert dane.check([tlsa(f"2 0 1 {ca_digest}")], chain[:1], "mx.remote.test") is not None
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    ee = tlsa(f"3 1 1 {hashlib.sha256(spki).hexdigest()}")
    assert dane.check([tlsa("3 1 1 " + "00" * 32), ee], chain, "any.name") is None
    assert dane.check([tlsa("3 1 1 " + "00" * 32)], chain, "mx.remote.test") is not None
    # Only PKIX usages: TLS is required, nothing to check.
    assert dane.check([tlsa(f"1 1 1 {'00' * 32}")], chain, "mx.remote.test") is None


def test_dane_needs_a_trusted_validating_resolver(tmp_path: Path) -> None:
    from exmaild.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text("[queue]\ndane = true\nmta_sts_port = 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    text = str(e.value)
    assert "queue.dane: needs dns_trust_ad = true" in text
    assert "queue.mta_sts_port: must be a port number" in text
    path.write_text("[queue]\ndane = true\ndns_trust_ad = true\nmta_sts = false\n")
    q = load_config(str(path)).queue
    assert (q.dane, q.dns_trust_ad, q.mta_sts, q.mta_sts_port) == (True, True, False, 443)

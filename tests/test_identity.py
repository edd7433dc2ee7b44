"""The server's name: start-up warning for unqualified names, outbound EHLO
held while the name is unqualified, and the self-signed certificate (a
server certificate for the configured name, remade when the name changes)."""

from __future__ import annotations

import dataclasses
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from exmaild.config import Config, QueueConfig, ServerConfig
from exmaild.netutil import hostname_problem
from exmaild.queue.runner import QueueRunner
from exmaild.store.connector import Store

from .daemon import Daemon, write_config
from .queuelab import FakeDNS, FakeSMTP, queue_mail, statuses


def _set_hostname(config: Path, name: str) -> None:
    text = config.read_text()
    start = text.index("hostname = ")
    end = text.index("\n", start)
    config.write_text(text[:start] + f'hostname = "{name}"' + text[end:])


def _cert(d: Daemon) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d.cwd / "var" / "tls" / "selfsigned.crt").read_bytes())


def _served(port: int, name: str, cafile: Path) -> bytes:
    """The certificate imaps serves, verified as a client does (name and trust)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname=name) as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_hostname_problem_names_what_is_wrong() -> None:
    assert hostname_problem("mail.example.com") is None
    assert hostname_problem("mx.example.test.") is None
    for bad in ("localhost", "LOCALHOST", "localhost.localdomain", "box.localdomain",
                "mailhost", "", "192.0.2.1"):
        assert hostname_problem(bad) is not None, bad


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    # Every DeprecationWarning reaches the log, so the test can look for them.
    monkeypatch.setenv("PYTHONWARNINGS", "always::DeprecationWarning")
    config, ports = write_config(tmp_path)
    d = Daemon(config, ports, tmp_path)
    yield d
    d.kill()


def test_self_signed_certificate_is_a_server_certificate_remade_for_a_new_name(
    daemon: Daemon,
) -> None:
    _set_hostname(daemon.config, "localhost")
    daemon.start()
    out = daemon.wait_for_log("outbound delivery held")
    assert "[server] hostname 'localhost' is a name for this machine only" in out
    assert "queue: outbound delivery held: the EHLO name 'localhost'" in out
    cert = _cert(daemon)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n.value) for n in san]
    assert names == ["localhost", "127.0.0.1"]  # no name twice
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert daemon.stop() in (0, -15)

    _set_hostname(daemon.config, "mail.example.test")
    daemon.start()
    out = daemon.wait_for_log("remade the self-signed certificate")
    assert "remade the self-signed certificate" in out and "for mail.example.test" in out
    cert2 = _cert(daemon)
    san2 = cert2.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san2.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]
    cafile = daemon.cwd / "var" / "tls" / "selfsigned.crt"
    served = _served(daemon.ports["imaps"], "mail.example.test", cafile)
    assert served == cert2.public_bytes(serialization.Encoding.DER)
    # STARTTLS uses the same certificate, verified for the new name too.
    ctx = ssl.create_default_context(cafile=str(cafile))
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
        s._host = "mail.example.test"  # type: ignore[attr-defined]  # name checked by TLS
        s.starttls(context=ctx)
        assert s.noop()[0] == 250
    assert daemon.stop() in (0, -15)
    assert "hostname 'mail.example.test'" not in daemon.output()  # qualified: no warning
    # pyOpenSSL's X509/PKey objects are deprecated: none used, none warned about.
    assert "DeprecationWarning" not in daemon.output()
    # Unchanged name: the certificate stays.
    daemon.start()
    assert _cert(daemon) == cert2


# -- outbound EHLO -------------------------------------------------------------------------------
@pytest.fixture
def maillines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "exmaild.maillog":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_unqualified_hostname_holds_outbound_mail_instead_of_ehlo_localhost(
    store: Store, cfg: Config, maillines: list[str]
) -> None:
    dns = FakeDNS()
    ports = [dns.listen()]
    dns.mx("remote.test", (10, "mx.remote.test"), a={"mx.remote.test": "127.0.0.1"})
    smtp = FakeSMTP()
    ports.append(smtp.listen())
    runners = []
    try:
        for hostname, helo_name in (("localhost", ""), ("mx.example.test", "mailhost")):
            q = QueueConfig(retry_schedule=(300,), scan_interval=3600.0, connect_timeout=2.0,
                            command_timeout=5.0, dns_servers=(dns.server,), dns_timeout=1.0,
                            remote_port=smtp.port, helo_name=helo_name)
            c = dataclasses.replace(cfg, queue=q, server=ServerConfig(hostname, "node1"))
            runner = QueueRunner(c, store, reactor)
            runners.append(runner)
            runner.startService()
            await runner.run_once()
            qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
            await runner.run_once()
            status, reply = statuses(store, qid)["bob@remote.test"]
            assert status == "deferred"  # kept for later, never bounced
            name = helo_name or hostname
            assert reply is not None and f"the EHLO name {name!r}" in reply
            assert "set [server] hostname (or [queue] helo_name)" in reply
            line = [x for x in maillines if f"{qid}: to=<bob@remote.test>" in x]
            assert line and "dsn=4.3.5, status=deferred (outbound delivery held" in line[-1]
            runner.stopService()
        assert smtp.connections == 0  # nobody was greeted with an unqualified name
    finally:
        for r in runners:
            if r.running:
                r.stopService()
        for p in ports:
            p.stopListening()


def test_names_host_matches_exact_and_one_label_wildcards(tmp_path: Path) -> None:
    from exmaild.tls import make_self_signed, names_host

    make_self_signed(tmp_path / "c.crt", tmp_path / "c.key", "mail.example.test")
    cert = x509.load_pem_x509_certificate((tmp_path / "c.crt").read_bytes())
    assert names_host(cert, "MAIL.example.test.") and names_host(cert, "localhost")
    assert not names_host(cert, "mx.example.test")
    assert not names_host(cert, "127.0.0.1")  # an IP SAN is not a DNS name

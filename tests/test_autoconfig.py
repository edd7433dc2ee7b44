"""Mail client autoconfiguration from the real daemon, read the way each
client reads it: Thunderbird's config-v1.1.xml and Outlook's POX
Autodiscover with ElementTree, Apple's .mobileconfig with plistlib; then
the advertised settings are used to log in."""

from __future__ import annotations

import http.client
import imaplib
import plistlib
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree as ET

import pytest

from .daemon import Daemon, exmailctl, write_config

ADDRESS = "bob@example.test"
PASSWORD = "Secr3tPass"
HOST = "mx.example.test"
AD_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AD_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AD_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("autoconfig")
    config, ports = write_config(tmp)
    # POP3 without TLS-on-connect and STARTTLS submission switched off: not offered.
    text = config.read_text()
    text = text.replace(f'pop3 = "127.0.0.1:{ports["pop3"]}"', 'pop3 = ""')
    text = text.replace(f'submission = "127.0.0.1:{ports["submission"]}"', 'submission = ""')
    config.write_text(text)
    assert exmailctl(config, "domain", "add", "example.test").returncode == 0
    r = exmailctl(config, "user", "add", ADDRESS, "--password", PASSWORD)
    assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp)
    d.start()
    yield d
    d.kill()


def request(d: Daemon, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", d.ports["autoconfig"], timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def tls_context(d: Daemon) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(d.cwd / "var" / "tls" / "selfsigned.crt"))


@pytest.mark.parametrize("path", ["/.well-known/autoconfig/mail/config-v1.1.xml",
                                  "/mail/config-v1.1.xml"])
def test_thunderbird_autoconfig(daemon: Daemon, path: str) -> None:
    status, headers, body = request(daemon, "GET", f"{path}?emailaddress={quote(ADDRESS)}")
    assert status == 200 and headers["content-type"].startswith("application/xml")
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.test"
    assert [e.text for e in provider.findall("domain")] == ["example.test"]
    assert provider.findtext("displayName")

    def servers(tag: str) -> list[tuple[str | None, str | None, int, str | None, str | None]]:
        out = []
        for s in provider.findall(tag):
            assert s.findtext("hostname") == HOST
            assert s.findtext("authentication") == "password-cleartext"
            out.append((s.get("type"), s.findtext("socketType"), int(s.findtext("port") or 0),
                        s.findtext("username"), s.findtext("hostname")))
        return out

    p = daemon.ports
    assert servers("incomingServer") == [
        ("imap", "SSL", p["imaps"], ADDRESS, HOST),
        ("imap", "STARTTLS", p["imap"], ADDRESS, HOST),
        ("pop3", "SSL", p["pop3s"], ADDRESS, HOST),
    ]
    assert servers("outgoingServer") == [("smtp", "SSL", p["submissions"], ADDRESS, HOST)]

    # Without an address Thunderbird fills in its placeholder itself.
    status, _, body = request(daemon, "GET", path, headers={"Host": "autoconfig.example.test"})
    assert status == 200
    root = ET.fromstring(body)
    assert root.findtext("emailProvider/domain") == "example.test"
    assert root.findtext("emailProvider/incomingServer/username") == "%EMAILADDRESS%"


def test_outlook_autodiscover_and_its_settings_log_in(daemon: Daemon) -> None:
    req = (f'<?xml version="1.0" encoding="utf-8"?>'
           f'<Autodiscover xmlns="{AD_REQUEST}"><Request>'
           f'<EMailAddress>{ADDRESS}</EMailAddress>'
           f'<AcceptableResponseSchema>{AD_OUTLOOK}</AcceptableResponseSchema>'
           f'</Request></Autodiscover>').encode()
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        status, headers, body = request(daemon, "POST", path, req,
                                        {"Content-Type": "text/xml"})
        assert status == 200, body
        assert headers["content-type"].startswith("application/xml")
    root = ET.fromstring(body)
    ns = {"r": AD_RESPONSE, "o": AD_OUTLOOK}
    assert root.tag == f"{{{AD_RESPONSE}}}Autodiscover"
    account = root.find("o:Response/o:Account", ns)
    assert account is not None
    assert account.findtext("o:AccountType", namespaces=ns) == "email"
    assert account.findtext("o:Action", namespaces=ns) == "settings"
    protocols = {}
    for proto in account.findall("o:Protocol", ns):
        def get(name: str, proto: ET.Element = proto) -> str | None:
            return proto.findtext(f"o:{name}", namespaces=ns)
        assert get("Server") == HOST and get("LoginName") == ADDRESS
        assert get("SPA") == "off" and get("AuthRequired") == "on" and get("SSL") == "on"
        protocols.setdefault(get("Type"), []).append((int(get("Port") or 0), get("Encryption")))
    p = daemon.ports
    assert protocols == {"IMAP": [(p["imaps"], "SSL"), (p["imap"], "TLS")],
                         "POP3": [(p["pop3s"], "SSL")],
                         "SMTP": [(p["submissions"], "SSL")]}
    # Use what Outlook was told: IMAP over TLS on that port, SMTP the same.
    ctx = tls_context(daemon)
    port, _ = protocols["IMAP"][0]
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx) as imap:
        assert imap.login(ADDRESS, PASSWORD)[0] == "OK"
    port, _ = protocols["SMTP"][0]
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as smtp:
        assert smtp.login(ADDRESS, PASSWORD)[0] == 235


def test_apple_mobileconfig(daemon: Daemon) -> None:
    status, headers, body = request(daemon, "GET", f"/mobileconfig?email={quote(ADDRESS)}")
    assert status == 200
    assert headers["content-type"] == "application/x-apple-aspen-config"
    assert ".mobileconfig" in headers["content-disposition"]
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    assert profile["PayloadUUID"] and profile["PayloadIdentifier"]
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == ADDRESS
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"], mail["IncomingMailServerUsername"]) == (
        HOST, daemon.ports["imaps"], True, ADDRESS)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"], mail["OutgoingMailServerUsername"]) == (
        HOST, daemon.ports["submissions"], True, ADDRESS)
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["PayloadUUID"] != profile["PayloadUUID"]
    # The same address gets the same UUIDs: installing again replaces the profile.
    assert plistlib.loads(request(daemon, "GET", f"/mobileconfig?email={ADDRESS}")[2]) == profile


def test_bad_requests_get_http_errors_and_the_daemon_lives_on(daemon: Daemon) -> None:
    assert request(daemon, "GET", "/mobileconfig")[0] == 400
    assert request(daemon, "GET", "/mobileconfig?email=not-an-address")[0] == 400
    assert request(daemon, "GET", "/mail/config-v1.1.xml?emailaddress=%0a%0d")[0] == 400
    assert request(daemon, "GET", "/nothing-here")[0] == 404
    assert request(daemon, "GET", "/autodiscover/autodiscover.xml")[0] == 405
    assert request(daemon, "POST", "/autodiscover/autodiscover.xml", b"<not xml")[0] == 400
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>'
            b"<Autodiscover><Request><EMailAddress>&x;@example.test</EMailAddress>"
            b"</Request></Autodiscover>")
    assert request(daemon, "POST", "/autodiscover/autodiscover.xml", bomb)[0] == 400
    # A body over the limit is refused before it is read.
    with socket.create_connection(("127.0.0.1", daemon.ports["autoconfig"]), timeout=10) as s:
        s.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        reply = s.makefile("rb").readline()
    assert reply.startswith(b"HTTP/1.1 413")
    assert daemon.health()["status"] == "ok"
    assert "Traceback" not in daemon.output()


def test_autoconfig_listener_can_be_switched_off(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    text = config.read_text().replace(f'autoconfig = "127.0.0.1:{ports["autoconfig"]}"',
                                      'autoconfig = ""')
    config.write_text(text)
    d = Daemon(config, ports, tmp_path)
    try:
        d.start()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports["autoconfig"]), timeout=5).close()
        assert "listening for autoconfig" not in d.output()
    finally:
        d.kill()

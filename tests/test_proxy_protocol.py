"""The PROXY protocol (v1 and v2) on listeners behind a load balancer, through
the real daemon: the client named in the header is the one the daemon sees in
`Received:`, in its log, in per-address connection caps and login records; a
connection without a header, from an untrusted network or with a broken
header is closed; STARTTLS and implicit TLS work after the header."""

from __future__ import annotations

import imaplib
import ipaddress
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exmaild.proxyproto import V2_SIGNATURE, ProxyHeaderError, parse
from exmaild.tls import make_self_signed

from .daemon import REPO, Daemon, env, exmailctl, write_config

USER, PASSWORD = "bob@example.test", "Secret9Pass"


def v1(src: str, sport: int = 40000, dport: int = 25) -> bytes:
    kind = "TCP4" if ipaddress.ip_address(src).version == 4 else "TCP6"
    dst = "127.0.0.1" if kind == "TCP4" else "::1"
    return f"PROXY {kind} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str | None, sport: int = 40000, dport: int = 143, tlvs: bytes = b"") -> bytes:
    if src is None:  # LOCAL: the balancer's own health check
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    ip = ipaddress.ip_address(src)
    if ip.version == 4:
        body = ip.packed + ipaddress.IPv4Address("127.0.0.1").packed
        fam = 0x11
    else:
        body = ip.packed + ipaddress.IPv6Address("::1").packed
        fam = 0x21
    body += struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


class ProxiedSMTP(smtplib.SMTP):
    """smtplib, with a balancer's header in front of the conversation."""

    def __init__(self, port: int, header: bytes) -> None:
        self.header = header  # smtplib connects in __init__
        super().__init__("127.0.0.1", port, local_hostname="client.test")

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock


class ProxiedIMAP4(imaplib.IMAP4):
    def __init__(self, host: str, port: int, header: bytes) -> None:
        self.header = header  # imaplib connects in __init__
        super().__init__(host, port)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = super()._create_socket(timeout)
        sock.sendall(self.header)
        return sock


class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
    def __init__(self, host: str, port: int, header: bytes) -> None:
        self.header = header
        super().__init__(host, port, ssl_context=_client_ctx())

    def _create_socket(self, timeout: float | None) -> socket.socket:
        # The header goes in clear before the handshake, as HAProxy sends it.
        sock = imaplib.IMAP4._create_socket(self, timeout)
        sock.sendall(self.header)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _closed(sock: socket.socket, timeout: float = 20.0) -> bool:
    """True when the server closes the connection without a word."""
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("proxy")
    certs = tmp / "certs"
    make_self_signed(certs / "mail.crt", certs / "mail.key", "mx.example.test")
    config, ports = write_config(
        tmp, tls={"cert": str(certs / "mail.crt"), "key": str(certs / "mail.key")},
        proxy={"listeners": ["smtp", "submission", "imap", "imaps"], "timeout": 2},
        limits={"max_connections_per_ip": 1},
    )
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD, USER],
                   check=True, cwd=REPO, env=env(), timeout=60)
    d = Daemon(config, ports, tmp)
    d.start()
    yield d
    d.kill()


def _fetch_last(d: Daemon, header: bytes = b"") -> bytes:
    imap = ProxiedIMAP4("127.0.0.1", d.ports["imap"], header or v2("198.51.100.99"))
    try:
        imap.starttls(_client_ctx())
        imap.login(USER, PASSWORD)
        typ, data = imap.select("INBOX")
        n = int(data[0])
        typ, msg = imap.fetch(str(n), "(BODY.PEEK[HEADER])")
        return msg[0][1]
    finally:
        imap.logout()


def test_v1_header_names_the_client_in_received(daemon: Daemon) -> None:
    s = ProxiedSMTP(daemon.ports["smtp"], v1("203.0.113.7"))
    s.sendmail("someone@outside.test", [USER], b"Subject: via balancer\r\n\r\nhi\r\n")
    s.quit()
    head = _fetch_last(daemon)
    assert b"Subject: via balancer" in head
    assert b"Received: from client.test ([203.0.113.7])" in head
    assert b"127.0.0.1" not in head


def test_starttls_after_the_header(daemon: Daemon) -> None:
    s = ProxiedSMTP(daemon.ports["submission"], v1("192.0.2.44", dport=587))
    s.starttls(context=_client_ctx())
    s.login(USER, PASSWORD)
    s.sendmail(USER, [USER], b"Subject: submitted behind a balancer\r\n\r\nhi\r\n")
    s.quit()
    head = _fetch_last(daemon)
    assert b"Subject: submitted behind a balancer" in head
    assert b"192.0.2.44" in head


def test_v2_ipv6_on_implicit_tls_and_the_session_log(daemon: Daemon) -> None:
    # With a unique-id TLV, which is skipped.
    imap = ProxiedIMAP4_SSL("127.0.0.1", daemon.ports["imaps"],
                            v2("2001:db8::77", tlvs=b"\x05\x00\x04abcd"))
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    imap.logout()
    out = daemon.wait_for_log("rip=2001:db8::77")
    assert any("imap session end" in line and "rip=2001:db8::77" in line
               for line in out.splitlines())


def test_ipv4_mapped_source_reads_as_ipv4(daemon: Daemon) -> None:
    imap = ProxiedIMAP4("127.0.0.1", daemon.ports["imap"], v2("::ffff:198.51.100.5"))
    # A remote client is not loopback: no password before TLS, though the
    # socket itself comes from 127.0.0.1 (the balancer).
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        imap.login(USER, PASSWORD)
    imap.starttls(_client_ctx())
    imap.login(USER, PASSWORD)
    imap.logout()
    assert "rip=198.51.100.5," in daemon.wait_for_log("rip=198.51.100.5,")
    # The login log (and with it the throttle) records the real client.
    out = exmailctl(daemon.config, "log", "logins", "--account", USER).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert any(r[2:4] == ["198.51.100.5", "imap"] and r[5] == "ok" for r in rows), out


def test_per_address_caps_count_the_real_client(daemon: Daemon) -> None:
    # max_connections_per_ip = 1: two clients behind one balancer both get in,
    # a second connection of one client is refused with the protocol's text.
    socks = []
    try:
        for src in ("203.0.113.10", "203.0.113.11"):
            sock = socket.create_connection(("127.0.0.1", daemon.ports["smtp"]), timeout=20)
            sock.sendall(v1(src))
            socks.append(sock)
            assert sock.recv(200).startswith(b"220 ")
        sock = socket.create_connection(("127.0.0.1", daemon.ports["smtp"]), timeout=20)
        sock.sendall(v1("203.0.113.10"))
        socks.append(sock)
        assert sock.recv(200).startswith(b"421 ")
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("opening", [b"EHLO client.test\r\n", b"PROXY TCP4 1.2.3 x 1 2\r\n",
                                     v2("203.0.113.9")[:12] + b"\x31" + b"\x00" * 10])
def test_bad_or_missing_header_closes(daemon: Daemon, opening: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", daemon.ports["smtp"]), timeout=20)
    with sock:
        try:
            sock.sendall(opening)
        except (ConnectionResetError, BrokenPipeError):
            pass
        else:
            assert _closed(sock)
    seen = daemon.wait_for_log("bad PROXY header from 127.0.0.1")
    assert "bad PROXY header from 127.0.0.1" in seen


def test_silent_client_times_out(daemon: Daemon) -> None:
    sock = socket.create_connection(("127.0.0.1", daemon.ports["imap"]), timeout=20)
    with sock:
        t0 = time.monotonic()
        assert _closed(sock)
        assert time.monotonic() - t0 >= 1.0  # [proxy] timeout = 2, not at once
    seen = daemon.wait_for_log("no PROXY header from 127.0.0.1 within 2")
    assert "no PROXY header from 127.0.0.1 within 2" in seen


def test_local_command_uses_the_balancer_address(daemon: Daemon) -> None:
    imap = ProxiedIMAP4("127.0.0.1", daemon.ports["imap"], v2(None))
    imap.login(USER, PASSWORD)
    imap.logout()
    assert "rip=127.0.0.1," in daemon.wait_for_log("rip=127.0.0.1,")


def test_listener_without_proxy_is_unchanged(daemon: Daemon) -> None:
    # pop3 is not in [proxy] listeners: a plain client talks at once.
    sock = socket.create_connection(("127.0.0.1", daemon.ports["pop3"]), timeout=20)
    with sock:
        assert sock.recv(200).startswith(b"+OK")


def test_untrusted_network_is_refused(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, proxy={"listeners": ["smtp"],
                                                  "trusted_networks": ["127.0.0.2/32"]})
    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        # The server aborts at once: under load the reset can meet the
        # client's connect() already, or else the header.
        try:
            sock = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=20)
        except ConnectionResetError:
            sock = None
        if sock is not None:
            with sock:
                try:
                    sock.sendall(v1("203.0.113.7"))
                except (ConnectionResetError, BrokenPipeError):
                    pass
                else:
                    assert _closed(sock)
        assert "not in proxy.trusted_networks" in d.wait_for_log("not in proxy.trusted_networks")
    finally:
        d.kill()


def test_config_refuses_unknown_listener(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, proxy={"listeners": ["smpt"]})
    r = exmailctl(config, "domain", "list")
    assert r.returncode != 0
    assert "proxy.listeners: 'smpt' is not a mail listener" in r.stderr


def test_parser_limits() -> None:
    assert parse(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25") is None  # needs CRLF
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY TCP4 " + b"1" * 120)
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY TCP4 203.0.113.7 127.0.0.1 040000 25\r\n")
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY TCP6 203.0.113.7 127.0.0.1 4 25\r\n")
    big = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000)
    with pytest.raises(ProxyHeaderError):
        parse(big)
    h = parse(v2("203.0.113.7") + b"rest")
    assert h is not None and h.source is not None and h.source.host == "203.0.113.7"
    assert h.length == 16 + 12
    unknown = parse(b"PROXY UNKNOWN\r\n")
    assert unknown is not None and unknown.source is None

"""TLS on every listener, through `openssl s_client` against the real daemon:
ALPN per listener (and refusal of a foreign protocol), certificates per host
name (SNI), TLS 1.2 minimum with AEAD suites only, session resumption, and
SIGHUP reloading certificates while an open connection keeps working.

One daemon serves the whole module; the SIGHUP test runs last and changes
the certificates."""

from __future__ import annotations

import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exmaild.tls import make_self_signed

from .daemon import REPO, Daemon, env, write_config

USER, PASSWORD = "bob@example.test", "Secret9Pass"
IMPLICIT = (("imaps", "imap"), ("pop3s", "pop3"), ("submissions", "smtp"))
STARTTLS = (("imap", "imap"), ("pop3", "pop3"), ("submission", "smtp"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("tls")
    certs, sni = tmp / "certs", tmp / "sni"
    make_self_signed(certs / "mail.crt", certs / "mail.key", "mx.example.test")
    make_self_signed(sni / "other.crt", sni / "other.key", "mail.other.test")
    # certbot's layout, a wildcard certificate
    make_self_signed(sni / "wild" / "fullchain.pem", sni / "wild" / "privkey.pem", "*.wild.test")
    # argon2 with 2 passes: the account below, hashed with 1, is rehashed at login.
    config, ports = write_config(tmp, tls={"cert": str(certs / "mail.crt"),
                                           "key": str(certs / "mail.key"), "sni_dir": str(sni)},
                                 auth={"argon2_time_cost": 2})
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD, USER],
                   check=True, cwd=REPO, env=env(), timeout=60)
    d = Daemon(config, ports, tmp)
    d.start()
    yield d
    d.kill()


def s_client(port: int, *args: str, starttls: str | None = None, send: str = "") -> str:
    """openssl s_client's whole output. `send` goes to the server after the
    handshake; with -ign_eof s_client then reads until the server closes, so
    a TLS 1.3 ticket sent after the handshake is in -sess_out."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    if starttls:
        cmd += ["-starttls", starttls]
    if send:
        cmd.append("-ign_eof")
    p = subprocess.run(cmd, input=send.encode(), capture_output=True, timeout=30)
    return (p.stdout + p.stderr).decode(errors="replace")


def subject(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("subject="):
            return line.removeprefix("subject=").strip()
    raise AssertionError(f"no certificate in:\n{out}")


QUIT = {"imap": "a LOGOUT\r\n", "pop3": "QUIT\r\n", "smtp": "QUIT\r\n"}


def test_alpn_negotiated_refused_or_absent_on_every_listener(daemon: Daemon) -> None:
    for svc, proto in IMPLICIT + STARTTLS:
        port = daemon.ports[svc]
        st = proto if (svc, proto) in STARTTLS else None
        ok = s_client(port, "-alpn", proto, starttls=st)
        assert f"ALPN protocol: {proto}\n" in ok, (svc, ok)
        both = s_client(port, "-alpn", f"h2,{proto}", starttls=st)
        assert f"ALPN protocol: {proto}\n" in both, (svc, both)
        # ALPACA: an HTTPS client redirected here is turned away at the handshake.
        foreign = s_client(port, "-alpn", "h2", starttls=st)
        assert "alert no application protocol" in foreign, (svc, foreign)
        assert "Cipher is (NONE)" in foreign
        other = "pop3" if proto == "imap" else "imap"
        assert "alert no application protocol" in s_client(port, "-alpn", other, starttls=st)
        # No ALPN at all: served as before.
        plain = s_client(port, starttls=st, send=QUIT[proto])
        assert "No ALPN negotiated" in plain and "Cipher is TLS_AES" in plain, (svc, plain)
    out = daemon.output()
    assert "it offered ALPN h2, this listener speaks imap (no_application_protocol)" in out
    assert "refused TLS from 127.0.0.1" in out
    assert "Traceback" not in out


def test_sni_picks_the_certificate_for_the_host_name(daemon: Daemon) -> None:
    for svc, proto in IMPLICIT:
        port = daemon.ports[svc]
        assert subject(s_client(port, "-servername", "mail.other.test")) == "CN = mail.other.test"
        assert subject(s_client(port, "-servername", "MAIL.wild.test")) == "CN = *.wild.test"
        assert subject(s_client(port, "-servername", "a.b.wild.test")) == "CN = mx.example.test"
        assert subject(s_client(port, "-servername", "nowhere.test")) == "CN = mx.example.test"
        assert subject(s_client(port, "-noservername")) == "CN = mx.example.test"
        # SNI and ALPN together: the switched context negotiates too.
        both = s_client(port, "-servername", "mail.other.test", "-alpn", proto)
        assert f"ALPN protocol: {proto}\n" in both and "CN = mail.other.test" in both
    imap = daemon.ports["imap"]
    out = s_client(imap, "-servername", "mail.other.test", starttls="imap")
    assert subject(out) == "CN = mail.other.test"


def test_tls12_minimum_and_aead_suites_only(daemon: Daemon) -> None:
    port = daemon.ports["imaps"]
    low = "DEFAULT@SECLEVEL=0"  # let the client really try what it offers
    for version in ("-tls1", "-tls1_1"):
        out = s_client(port, version, "-cipher", low)
        assert "alert protocol version" in out, out
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-SHA"):
        out = s_client(port, "-tls1_2", "-cipher", cbc)
        assert "Cipher is (NONE)" in out and "handshake failure" in out, (cbc, out)
    out = s_client(port, "-tls1_2")
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in out
    out = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in out
    assert "New, TLSv1.3" in s_client(port)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_resumption(daemon: Daemon, version: str, tmp_path: Path) -> None:
    for svc, proto in IMPLICIT:
        for sni in ((), ("-servername", "mail.other.test")):
            sess = tmp_path / f"{svc}-{len(sni)}.pem"
            first = s_client(daemon.ports[svc], version, *sni, "-sess_out", str(sess),
                             send=QUIT[proto])
            assert "\nNew, TLSv1." in first, first
            again = s_client(daemon.ports[svc], version, *sni, "-sess_in", str(sess),
                             send=QUIT[proto])
            assert "\nReused, TLSv1." in again, (svc, sni, again)


def test_imap_and_pop3_logins_over_tls_rehash_an_older_password_hash(daemon: Daemon) -> None:
    import imaplib
    import poplib

    from exmaild.config import load_config
    from exmaild.startup_checks import sqlite_path

    db = sqlite_path(load_config(str(daemon.config)))
    assert db is not None

    def stored() -> str:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT password_hash FROM accounts WHERE address = ?",
                            (USER,)).fetchone()
        return str(row[0])

    assert "$m=1024,t=1,p=1$" in stored()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL("127.0.0.1", daemon.ports["imaps"], ssl_context=ctx, timeout=30)
    assert imap.login(USER, PASSWORD)[0] == "OK"
    imap.logout()
    assert "$m=1024,t=2,p=1$" in stored()
    out = daemon.wait_for_log("rehashed the password of")
    assert (f"rehashed the password of {USER} with the current argon2id parameters "
            "(time_cost=2, memory_kib=1024, parallelism=1)") in out
    pop = poplib.POP3_SSL("127.0.0.1", daemon.ports["pop3s"], context=ctx, timeout=30)
    pop.user(USER)
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    pop.quit()
    assert daemon.output().count("rehashed the password of") == 1
    assert PASSWORD not in daemon.output()


def _imap_tls(port: int) -> tuple[ssl.SSLSocket, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    conn = ctx.wrap_socket(raw, server_hostname="mail.other.test")
    greeting = conn.recv(4096)
    return conn, greeting


def _read_until(conn: ssl.SSLSocket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_sighup_reloads_certificates_and_open_connections_go_on(daemon: Daemon) -> None:
    """Runs last in the module: it changes the certificates."""
    port = daemon.ports["imaps"]
    old, greeting = _imap_tls(port)
    assert greeting.startswith(b"* OK")
    # The ACME client's renewal: new files in place (and a new host), then SIGHUP.
    sni = daemon.cwd / "sni"
    make_self_signed(daemon.cwd / "new.crt", daemon.cwd / "new.key", "renewed.other.test")
    (daemon.cwd / "new.key").replace(sni / "other.key")
    (daemon.cwd / "new.crt").replace(sni / "other.crt")
    make_self_signed(sni / "added.crt", sni / "added.key", "mail.added.test")
    certs = daemon.cwd / "certs"
    make_self_signed(certs / "mail.crt", certs / "mail.key", "two.example.test")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    out = daemon.wait_for_log("SIGHUP: reloaded")
    assert "SIGHUP: reloaded the TLS certificate (CN=two.example.test, valid until" in out
    assert "; 3 more for SNI)" in out
    for svc, _ in IMPLICIT:
        p = daemon.ports[svc]
        assert subject(s_client(p)) == "CN = two.example.test"
        assert subject(s_client(p, "-servername", "mail.added.test")) == "CN = mail.added.test"
        # the renewed certificate no longer names mail.other.test: the default serves it
        assert subject(s_client(p, "-servername", "mail.other.test")) == "CN = two.example.test"
        got = subject(s_client(p, "-servername", "renewed.other.test"))
        assert got == "CN = renewed.other.test"
    # The connection opened before the reload still works, on its old certificate.
    assert old.getpeercert(binary_form=True) is not None
    old.sendall(b"a1 CAPABILITY\r\n")
    assert b"a1 OK" in _read_until(old, b"a1 ")
    old.sendall(b"a2 LOGOUT\r\n")
    assert b"a2 OK" in _read_until(old, b"a2 ")
    old.close()

    # A broken file: the daemon keeps the certificates it has.
    (sni / "added.crt").write_text("not a certificate\n")
    daemon.proc.send_signal(signal.SIGHUP)
    out = daemon.wait_for_log("cannot reload the TLS certificate")
    assert "keeping the old one" in out
    assert subject(s_client(port, "-servername", "mail.added.test")) == "CN = mail.added.test"
    assert daemon.health()["status"] == "ok"


def test_a_bad_sni_directory_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    import dataclasses

    from exmaild.config import ConfigError, TLSConfig, load_config
    from exmaild.errors import StartupError
    from exmaild.startup_checks import check_tls

    sni = tmp_path / "sni"
    make_self_signed(sni / "good.crt", sni / "good.key", "mail.good.test")
    make_self_signed(sni / "other.crt", sni / "bad.key", "mail.bad.test")
    (sni / "bad.crt").write_bytes((sni / "good.crt").read_bytes())  # not bad.key's certificate
    cfg = dataclasses.replace(load_config(None), tls=TLSConfig(sni_dir=str(sni)))
    with pytest.raises(StartupError, match=r"tls.sni_dir: .*bad.crt: .*bad.key is not the key"):
        check_tls(cfg)
    (sni / "bad.crt").unlink()
    check_tls(cfg)
    missing = dataclasses.replace(cfg, tls=TLSConfig(sni_dir=str(tmp_path / "nowhere")))
    with pytest.raises(StartupError, match="is not a directory"):
        check_tls(missing)
    conf = tmp_path / "x.toml"
    conf.write_text('[tls]\nmin_version = "1.1"\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(conf))
    assert "tls.min_version: '1.1' is not 1.2 or 1.3" in e.value.errors

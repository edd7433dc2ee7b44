"""SIGHUP (reload the TLS certificate, reopen logs) and SIGUSR1 (reopen logs)
through the real daemon, and the shipped logrotate file run by logrotate."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from exmaild import __version__
from exmaild.tls import make_self_signed

from .daemon import REPO, Daemon, write_config


def served_cert(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            ctx.wrap_socket(s) as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def starttls_cert(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # greeting
        s.sendall(b"EHLO client.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        with ctx.wrap_socket(s) as t:
            der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[Daemon]:
    certs = tmp_path / "certs"
    make_self_signed(certs / "mail.crt", certs / "mail.key", "one.example.test")
    config, ports = write_config(
        tmp_path, tls={"cert": str(certs / "mail.crt"), "key": str(certs / "mail.key")})
    d = Daemon(config, ports, tmp_path)
    yield d
    d.kill()


def test_sighup_reloads_the_certificate_for_new_connections(tls_daemon: Daemon) -> None:
    d = tls_daemon
    d.start()
    assert cn(served_cert(d.ports["imaps"])) == "one.example.test"
    # [server] hostname is mx.example.test: the configured certificate is not for it.
    assert "is not for [server] hostname mx.example.test" in d.output()
    # Like certbot's deploy hook: new files in place, then SIGHUP.
    certs = d.cwd / "certs"
    make_self_signed(certs / "new.crt", certs / "new.key", "two.example.test")
    (certs / "new.crt").replace(certs / "mail.crt")
    (certs / "new.key").replace(certs / "mail.key")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    out = d.wait_for_log("SIGHUP: reloaded")
    assert "SIGHUP: reloaded the TLS certificate (CN=two.example.test, valid until" in out
    assert out.count("SIGHUP:") == 1  # one line per signal
    for svc in ("imaps", "pop3s", "submissions"):
        assert cn(served_cert(d.ports[svc])) == "two.example.test", svc
    assert cn(starttls_cert(d.ports["submission"])) == "two.example.test"

    # A broken file: the daemon says so and keeps serving the last good one.
    (certs / "mail.crt").write_text("not a certificate\n")
    d.proc.send_signal(signal.SIGHUP)
    out = d.wait_for_log("cannot reload the TLS certificate")
    assert "SIGHUP: cannot reload the TLS certificate (" in out and "keeping the old one" in out
    assert cn(served_cert(d.ports["imaps"])) == "two.example.test"
    assert d.proc.poll() is None and d.health()["status"] == "ok"
    assert "Traceback" not in d.output()
    assert d.stop() in (0, -signal.SIGTERM)


@pytest.fixture
def file_log_daemon(tmp_path: Path) -> Iterator[Daemon]:
    logs = tmp_path / "logs"
    config, ports = write_config(tmp_path, log={"file": str(logs / "exmaild.log"),
                                                "json_file": str(logs / "exmaild.json")})
    d = Daemon(config, ports, tmp_path)
    yield d
    d.kill()


def _make_log_lines(d: Daemon) -> None:
    """Something that logs a line: an SMTP session (connect, QUIT)."""
    with socket.create_connection(("127.0.0.1", d.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"QUIT\r\n")
        f.readline()
    with urllib.request.urlopen(f"http://127.0.0.1:{d.ports['admin']}/healthz", timeout=5):
        pass


def test_sigusr1_reopens_logs_after_rename_and_file_log_is_not_on_stdout(
    file_log_daemon: Daemon,
) -> None:
    d = file_log_daemon
    d.start()
    logs = d.cwd / "logs"
    text, js = logs / "exmaild.log", logs / "exmaild.json"
    assert wait_until(lambda: "listening for imaps" in text.read_text())
    # With [log] file set, the lines are there only, not also on stdout.
    assert "listening for imaps" not in d.output()
    assert "exmaild" not in d.output()
    # What logrotate does: rename, then signal.
    text.rename(logs / "exmaild.log.1")
    js.rename(logs / "exmaild.json.1")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: text.exists() and "SIGUSR1: reopened" in text.read_text())
    line = [x for x in text.read_text().splitlines() if "SIGUSR1" in x]
    assert len(line) == 1 and str(text) in line[0] and str(js) in line[0]
    old_text = (logs / "exmaild.log.1").read_text()
    old_json = (logs / "exmaild.json.1").read_text()
    _make_log_lines(d)
    assert wait_until(lambda: js.exists() and "SIGUSR1" in js.read_text())
    # SIGHUP reopens too (and reloads the self-signed certificate).
    text.rename(logs / "exmaild.log.2")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: text.exists() and "SIGHUP: reloaded" in text.read_text())
    assert (logs / "exmaild.log.1").read_text() == old_text  # nothing more went there
    assert (logs / "exmaild.json.1").read_text() == old_json
    assert d.proc.poll() is None
    assert d.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down." in text.read_text()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_shipped_logrotate_config_rotates_both_logs(file_log_daemon: Daemon) -> None:
    d = file_log_daemon
    d.start()
    logs = d.cwd / "logs"
    assert wait_until(lambda: (logs / "exmaild.json").exists()
                      and "listening" in (logs / "exmaild.log").read_text())
    assert d.proc is not None
    shipped = (REPO / "conf" / "logrotate.d" / "exmaild").read_text()
    assert "systemctl kill --signal=USR1 exmaild.service" in shipped
    # The shipped file with this test's paths, owner and daemon (no systemd here).
    start = shipped.index("    postrotate\n") + len("    postrotate\n")
    end = shipped.index("    endscript")
    conf = (shipped[:start] + f"        kill -USR1 {d.proc.pid}\n" + shipped[end:])
    conf = conf.replace("/var/log/exmaild/", f"{logs}/")
    conf = conf.replace("/var/lib/exmaild/log/", f"{d.cwd}/var/log/")
    conf = conf.replace("create 0640 exmaild adm", "create 0640")
    (d.cwd / "logrotate.conf").write_text(conf)
    state = d.cwd / "logrotate.state"
    r = subprocess.run(["logrotate", "-f", "-s", str(state), str(d.cwd / "logrotate.conf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (logs / "exmaild.log.1").exists() and (logs / "exmaild.json.1").exists()
    assert wait_until(lambda: "SIGUSR1: reopened" in (logs / "exmaild.log").read_text())
    _make_log_lines(d)
    assert wait_until(lambda: "SIGUSR1" in (logs / "exmaild.json").read_text())
    assert "SIGUSR1" not in (logs / "exmaild.log.1").read_text()
    assert d.stop() in (0, -signal.SIGTERM)


def test_start_up_lines_in_order_and_one_line_at_shutdown(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    d = Daemon(config, ports, tmp_path)
    try:
        d.start()
        assert d.stop() in (0, -signal.SIGTERM)
    finally:
        d.kill()
    out = d.output()
    lines = out.splitlines()

    def first(text: str) -> int:
        return next(i for i, x in enumerate(lines) if text in x)

    assert first(f"exmaild {__version__} starting: config ") < first("database schema") \
        < first("listening for smtp")
    # No Twisted per-factory noise with object addresses, no per-port closing lines.
    assert " at 0x" not in out and "Starting factory" not in out
    assert "Stopping factory" not in out and "Port " not in out
    stopped = [x for x in lines if "stopped after" in x]
    assert len(stopped) == 1 and "exmaild stopped after" in stopped[0]
    assert first("Received SIGTERM") < first("stopped after") < first("Server Shut Down.")

"""GET /metrics from the real daemon (twistd), parsed with prometheus_client's
own parser: scraped, then SMTP in, IMAP logins, POP3 commands and outbound
mail to a remote server that accepts, defers and rejects, then scraped again
to see each counter and gauge move. On SQLite and PostgreSQL."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import BACKENDS
from .daemon import Daemon, exmailctl, write_config

PASSWORD = "Secr3tPass"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class RemoteMTA(socketserver.StreamRequestHandler):
    """The remote side of outbound mail: a minimal SMTP server whose reply to
    RCPT depends on the local part (accept@, defer@, reject@)."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 remote.test ESMTP")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.reply("250 remote.test")
            elif verb == b"RCPT":
                if b"defer@" in line:
                    self.reply("451 4.3.0 try later")
                elif b"reject@" in line:
                    self.reply("550 5.1.1 no such user")
                else:
                    self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                self.reply("354 go ahead")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                self.reply("250 2.0.0 queued")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("250 2.0.0 ok")


@pytest.fixture(scope="module")
def remote() -> Iterator[int]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), RemoteMTA)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(request: pytest.FixtureRequest, remote: int,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        from .conftest import _wipe_pg

        _wipe_pg(url)
    tmp = tmp_path_factory.mktemp(f"metrics-{request.param}")
    config, ports = write_config(tmp, url, queue={"relayhost": f"[127.0.0.1]:{remote}",
                                                   "relayhost_tls": "none"})
    for argv in (["domain", "add", "example.test"],
                 ["user", "add", "ann@example.test", "--password", PASSWORD]):
        r = exmailctl(config, *argv)
        assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp)
    d.start()
    yield d
    d.kill()


def scrape(d: Daemon) -> Samples:
    url = f"http://127.0.0.1:{d.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:  # no token needed
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(d: Daemon, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(d)
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_metrics_move_with_traffic(daemon: Daemon) -> None:
    before = scrape(daemon)
    assert value(before, "exmaild_database_up") == 1
    assert value(before, "exmaild_db_pool_threads_max") >= 1
    assert value(before, "process_resident_memory_bytes") > 0
    assert any(k[0] == "exmaild_build_info" for k in before)

    # SMTP in: one message to a local mailbox on the MX listener.
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@remote.test", "ann@example.test", "metrics"
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=20) as s:
        s.ehlo("client.test")
        s.send_message(msg)

    # IMAP: one good login, one bad; POP3: a session with a STAT.
    with imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=20) as im:
        with pytest.raises(imaplib.IMAP4.error):
            im.login("ann@example.test", "wrong")
    with imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=20) as im:
        im.login("ann@example.test", PASSWORD)
        im.select("INBOX")
        im.logout()
    pop = poplib.POP3("127.0.0.1", daemon.ports["pop3"], timeout=20)
    pop.user("ann@example.test")
    pop.pass_(PASSWORD)
    assert pop.stat()[0] >= 1
    pop.quit()

    # Submission out: one recipient accepted, one deferred, one rejected remotely.
    out = EmailMessage()
    out["From"], out["Subject"] = "ann@example.test", "out"
    out["To"] = "accept@remote.test, defer@remote.test, reject@remote.test"
    out.set_content("out\n")
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as s:
        s.ehlo("client.test")
        s.login("ann@example.test", PASSWORD)
        s.send_message(out)

    after = wait_for(daemon, lambda a: value(a, "exmaild_messages_bounced_total",
                                             reason="rejected")
                     > value(before, "exmaild_messages_bounced_total", reason="rejected")
                     and value(a, "exmaild_queue_recipients", status="deferred") >= 1)

    def moved(name: str, by: float = 1, **labels: str) -> None:
        got = value(after, name, **labels) - value(before, name, **labels)
        assert got >= by, f"{name}{labels} moved by {got}"

    moved("exmaild_connections_total", protocol="smtp", listener="smtp")
    moved("exmaild_connections_total", protocol="smtp", listener="submission")
    moved("exmaild_connections_total", 2, protocol="imap", listener="imap")
    moved("exmaild_connections_total", protocol="pop3", listener="pop3")
    moved("exmaild_commands_total", 2, protocol="smtp", command="MAIL")
    moved("exmaild_commands_total", 4, protocol="smtp", command="RCPT")
    moved("exmaild_commands_total", protocol="smtp", command="AUTH")
    moved("exmaild_commands_total", 2, protocol="imap", command="LOGIN")
    moved("exmaild_commands_total", protocol="imap", command="SELECT")
    moved("exmaild_commands_total", protocol="pop3", command="STAT")
    moved("exmaild_logins_total", 1, protocol="imap", result="success")
    moved("exmaild_logins_total", 1, protocol="imap", result="failure")
    moved("exmaild_logins_total", 1, protocol="pop3", result="success")
    moved("exmaild_logins_total", 1, protocol="smtp", result="success")
    moved("exmaild_messages_received_total", listener="smtp")
    moved("exmaild_messages_received_total", listener="submission")
    moved("exmaild_messages_delivered_total", destination="local")
    moved("exmaild_messages_delivered_total", destination="remote")
    moved("exmaild_messages_deferred_total", destination="remote")
    moved("exmaild_messages_bounced_total", reason="rejected")
    moved("exmaild_ingest_batch_size_count", 2)
    moved("exmaild_ingest_latency_seconds_count", 2)
    assert value(after, "exmaild_ingest_latency_seconds_sum") > 0
    # The deferred recipient waits in the queue (the bounce's DSN went to ann).
    assert value(after, "exmaild_queue_recipients", status="deferred") >= 1
    assert value(after, "exmaild_queue_messages") >= 1
    assert value(after, "exmaild_queue_oldest_age_seconds") >= 0
    assert value(after, "exmaild_blob_store_bytes") > value(before, "exmaild_blob_store_bytes")
    assert value(after, "exmaild_blob_segments") >= 1
    assert ("exmaild_db_pool_queue_depth", ()) in after
    # The daemon's connection admission reports what is open now: this scrape's only.
    assert value(after, "exmaild_connections_open", listener="smtp") == 0


def test_metrics_bound_a_client_command_label_set(daemon: Daemon) -> None:
    """Words a client makes up count as command="unknown", not a series each."""
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=20) as s:
        for word in ("XYZZY", "FOOBAR"):
            assert s.docmd(word)[0] in (500, 502)
        # This connection is open while the scrape runs.
        assert value(scrape(daemon), "exmaild_connections_open", listener="smtp") >= 1
    got = scrape(daemon)
    assert value(got, "exmaild_commands_total", protocol="smtp", command="unknown") >= 2
    assert not any(dict(k[1]).get("command") in ("XYZZY", "FOOBAR") for k in got)


def test_metrics_needs_no_token(daemon: Daemon) -> None:
    """/metrics, like /healthz, answers without a token; the API still wants one."""
    base = f"http://127.0.0.1:{daemon.ports['admin']}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        assert b"# TYPE exmaild_connections_total counter" in r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/api/v1/domains", timeout=10)
    assert e.value.code == 401


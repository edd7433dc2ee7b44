"""DKIM signing end to end: keys made by `exmailctl dkim` while the daemon
runs, a message submitted with smtplib, the queue delivering it to a sink
through a relayhost; the bytes the sink got verify with dkimpy and with
OpenDKIM (opendkim-testmsg). `dkim check` against a DNS server on 127.0.0.1."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from .daemon import Daemon, exmailctl, write_config
from .dkimlab import ThreadDNS, opendkim_available, opendkim_verify, parse_dns_line
from .smtputil import Sink

PASSWORD = "Corr3ct-Horse-Battery"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Daemon, Path, Sink, ThreadDNS]]:
    sink, tdns = Sink(), ThreadDNS()
    config, ports = write_config(tmp_path, queue={
        "relayhost": f"[127.0.0.1]:{sink.port}", "scan_interval": 0.3,
        "retry_schedule": [3600], "connect_timeout": 2, "dns_servers": [tdns.server],
        "dns_timeout": 1,
    })
    daemon = Daemon(config, ports, tmp_path)
    for args in (("domain", "add", "example.test"),):
        assert exmailctl(config, *args).returncode == 0
    r = exmailctl(config, "user", "add", "alice@example.test", "--name", "Alice",
                  "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    daemon.start()
    try:
        yield daemon, config, sink, tdns
    finally:
        daemon.stop()
        sink.close()
        tdns.close()


def submit(port: int, subject: str) -> None:
    msg = (f"From: Alice <alice@example.test>\r\nTo: <bob@remote.test>\r\nSubject: {subject}"
           f"\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\nMessage-ID: <{subject}@example.test>"
           "\r\n\r\nHello Bob.\r\n.a line with a dot\r\n\r\n\r\n")
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@remote.test"], msg.encode())


def wait_for_mail(sink: Sink, n: int) -> bytes:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = sink.messages()
        if len(got) >= n:
            return got[n - 1][2]
        time.sleep(0.1)
    raise AssertionError(f"the sink got {len(sink.messages())} message(s), not {n}")


def verify_all(message: bytes, records: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip(".").lower())
        return value.encode() if value is not None else None

    d = dkim.DKIM(message)
    count = sum(1 for n, _ in d.headers if n.lower() == b"dkim-signature")
    out = []
    for i in range(count):
        try:
            out.append(dkim.DKIM(message).verify(i, dnsfunc=dnsfunc))
        except dkim.DKIMException:  # e.g. body hash mismatch
            out.append(False)
    return out


def test_signed_by_the_daemon_verifies(running: tuple[Daemon, Path, Sink, ThreadDNS],
                                       tmp_path: Path) -> None:
    daemon, config, sink, tdns = running
    # Without a key the message leaves unsigned.
    submit(daemon.ports["submission"], "unsigned")
    assert b"DKIM-Signature" not in wait_for_mail(sink, 1)

    # A key generated while the daemon runs signs the next message.
    gen = exmailctl(config, "dkim", "generate", "example.test")
    assert gen.returncode == 0, gen.stderr
    lines = gen.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith('s1._domainkey.example.test. IN TXT "v=DKIM1;'
                                                   ' k=rsa; p=')
    name, value = parse_dns_line(lines[0])
    records = {name: value}
    submit(daemon.ports["submission"], "rsa")
    signed = wait_for_mail(sink, 2)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"d=example.test" in signed and b"s=s1" in signed
    assert verify_all(signed, records) == [True]
    assert verify_all(signed.replace(b"Hello Bob", b"Hello Rob"), records) == [False]

    # Ed25519 as a second signature.
    gen = exmailctl(config, "dkim", "generate", "example.test", "--algorithm", "ed25519",
                    "--selector", "ed1")
    assert gen.returncode == 0, gen.stderr
    name, value = parse_dns_line(gen.stdout)
    records[name] = value
    assert "k=ed25519" in value
    submit(daemon.ports["submission"], "both")
    both = wait_for_mail(sink, 3)
    assert verify_all(both, records) == [True, True]

    show = exmailctl(config, "dkim", "show", "example.test")
    assert show.returncode == 0
    assert sorted(parse_dns_line(x) for x in show.stdout.splitlines()) == sorted(records.items())

    why = opendkim_available()
    if why is None:
        rc, err = opendkim_verify(signed, records, tmp_path / "od1")
        assert rc == 0, err
        rc, err = opendkim_verify(both, records, tmp_path / "od2")
        assert rc == 0, err
        rc, err = opendkim_verify(signed.replace(b"Hello Bob", b"Hello Rob"), records,
                                  tmp_path / "od3")
        assert rc != 0 and "Bad signature" in err
    elif __import__("os").environ.get("CI"):
        pytest.fail(f"OpenDKIM check must run in CI: {why}")

    # dkim check: nothing published, then the right records, then a stale key.
    check = exmailctl(config, "dkim", "check", "example.test")
    assert check.returncode == 1 and "not published" in check.stdout
    tdns.records.update(records)
    check = exmailctl(config, "dkim", "check", "example.test")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": ok") == 2
    tdns.records["s1._domainkey.example.test"] = records["ed1._domainkey.example.test"]
    check = exmailctl(config, "dkim", "check", "example.test")
    assert check.returncode == 1 and "published key differs" in check.stdout


def test_rotation_with_two_selectors(running: tuple[Daemon, Path, Sink, ThreadDNS]) -> None:
    daemon, config, sink, _ = running
    old = parse_dns_line(exmailctl(config, "dkim", "generate", "example.test").stdout)
    new = exmailctl(config, "dkim", "generate", "example.test", "--selector", "s2",
                    "--standby")
    assert new.returncode == 0
    new_rec = parse_dns_line(new.stdout)
    records = dict([old, new_rec])
    # Standby: published, not signing yet; `show` lists the active key only.
    assert [parse_dns_line(x) for x in exmailctl(config, "dkim", "show", "example.test")
            .stdout.splitlines()] == [old]
    submit(daemon.ports["submission"], "before")
    assert b"s=s1;" in wait_for_mail(sink, 1)
    act = exmailctl(config, "dkim", "activate", "example.test", "s2")
    assert act.returncode == 0
    submit(daemon.ports["submission"], "after")
    after = wait_for_mail(sink, 2)
    assert b"s=s2;" in after and b"s=s1;" not in after
    assert verify_all(after, records) == [True]
    listing = exmailctl(config, "dkim", "show", "example.test", "--all").stdout
    assert "s1._domainkey" in listing and "; retired" in listing and "; active" in listing
    assert exmailctl(config, "dkim", "remove", "example.test", "s1").returncode == 0
    assert "s1._domainkey" not in exmailctl(config, "dkim", "show", "example.test",
                                            "--all").stdout


def test_mx_checks_in_the_daemon(tmp_path: Path) -> None:
    """The fake-boss mail refused by the running daemon; outside mail stored
    with Authentication-Results; the verdicts on the mail log line."""
    tdns = ThreadDNS()
    config, ports = write_config(tmp_path, mailauth={"enabled": True},
                                 queue={"dns_servers": [tdns.server], "dns_timeout": 1})
    assert exmailctl(config, "domain", "add", "example.test").returncode == 0
    assert exmailctl(config, "user", "add", "alice@example.test", "--password-stdin",
                     stdin=PASSWORD + "\n").returncode == 0
    daemon = Daemon(config, ports, tmp_path)
    daemon.start()
    try:
        def mx(sender: str, frm: str) -> tuple[int, bytes]:
            m = (f"From: <{frm}>\r\nTo: <alice@example.test>\r\nSubject: s\r\n"
                 f"Authentication-Results: mx.example.test; dmarc=pass header.from={frm}\r\n"
                 "\r\nPlease pay this invoice today.\r\n").encode()
            with smtplib.SMTP("127.0.0.1", ports["smtp"], local_hostname="c.example.net") as s:
                s.ehlo()
                s.mail(sender)
                s.rcpt("alice@example.test")
                return s.data(m)

        code, text = mx("ceo@example.test", "ceo@example.test")
        assert code == 550 and text.startswith(b"5.7.1"), text
        code, _ = mx("carol@remote.test", "carol@remote.test")
        assert code == 250
        tdns.records["example.test"] = "v=spf1 ip4:127.0.0.1 -all"
        code, _ = mx("ceo@example.test", "ceo@example.test")
        assert code == 250

        import imaplib

        with imaplib.IMAP4("127.0.0.1", ports["imap"]) as im:
            im.login("alice@example.test", PASSWORD)
            im.select("INBOX")
            headers = []
            for n in (b"1", b"2"):
                typ, data = im.fetch(n, "(BODY.PEEK[HEADER])")
                headers.append(data[0][1].decode())
        for h in headers:
            assert h.count("Authentication-Results: mx.example.test;") == 1
            assert "dmarc=pass header.from" not in h.split("dmarc=", 1)[0]
        assert "spf=none smtp.mailfrom=carol@remote.test" in headers[0]
        assert "spf=pass smtp.mailfrom=ceo@example.test" in headers[1]
        deadline = time.monotonic() + 15  # log lines are written in batches
        while True:
            log = daemon.log.read_text()
            if log.count("action=") >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "from=<carol@remote.test>" in log and "spf=none" in log and "action=inbox" in log
        assert "spf=pass" in log and "action=reject" in log
    finally:
        daemon.stop()
        tdns.close()

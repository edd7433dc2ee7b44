"""ARC sealing of forwarded mail (RFC 8617), end to end: a DKIM-signed
message comes in over the MX (checks on, DNS from a server on 127.0.0.1), a
member's Sieve redirect sends it on through the queue to a sink on
127.0.0.1, and the sink's copy verifies with dkimpy's `arc_verify`: a new
chain (i=1, cv=none) and one continued after a mailing list's seal (i=2)."""

from __future__ import annotations

import smtplib
from pathlib import Path

import dkim

from exmaild.config import Config
from exmaild.mailauth import arcseal
from exmaild.mailauth import keys as K

from .daemon import Daemon, exmailctl, write_config
from .dkimlab import ThreadDNS, parse_dns_line
from .smtputil import Sink
from .test_mailauth_daemon import wait_for_mail

PASSWORD = "Corr3ct-Horse-Battery"


def signed(records: dict[str, str], subject: str) -> bytes:
    """A message from carol@sender.test signed by sender.test's key."""
    key = K.new_key("sender.test", "k1", "rsa")
    records[key.record_name.rstrip(".")] = key.record_value
    msg = (f"From: Carol <carol@sender.test>\r\nTo: <alice@example.test>\r\n"
           f"Subject: {subject}\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
           f"Message-ID: <{subject}@sender.test>\r\n\r\nThe figures for Q4.\r\n").encode()
    return dkim.sign(msg, b"k1", b"sender.test", key.private_key.encode(),
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + msg


def list_sealed(records: dict[str, str], message: bytes) -> bytes:
    """`message` as a mailing list at list.test passes it on: its own A-R, sealed."""
    key = K.new_key("list.test", "l1", "rsa")
    records[key.record_name.rstrip(".")] = key.record_value
    with_ar = (b"Authentication-Results: list.test;\r\n\tdkim=pass header.d=sender.test\r\n"
               + message)
    return arcseal.seal(with_ar, key, "list.test", "list.test") + with_ar


def aar_of(message: bytes) -> bytes:
    """The (unfolded) value of the topmost ARC-Authentication-Results field."""
    value = message.split(b"ARC-Authentication-Results:", 1)[1]
    lines = [value.split(b"\r\n")[0]]
    for line in value.split(b"\r\n")[1:]:
        if line[:1] not in (b" ", b"\t"):
            break
        lines.append(line)
    return b" ".join(x.strip() for x in lines)


def test_forward_is_arc_sealed(cfg: Config, tmp_path: Path) -> None:
    sink, tdns = Sink(), ThreadDNS()
    config, ports = write_config(tmp_path, db_url=cfg.database.url, mailauth={"enabled": True},
                                 queue={"relayhost": f"[127.0.0.1]:{sink.port}",
                                        "scan_interval": 0.3, "retry_schedule": [3600],
                                        "connect_timeout": 2, "dns_servers": [tdns.server],
                                        "dns_timeout": 1})
    try:
        assert exmailctl(config, "domain", "add", "example.test").returncode == 0
        r = exmailctl(config, "user", "add", "alice@example.test", "--password-stdin",
                      stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        script = tmp_path / "fwd.sieve"
        script.write_text('redirect "bob@remote.test";\n')
        for args in (("sieve", "put", "alice@example.test", "fwd", str(script)),
                     ("sieve", "activate", "alice@example.test", "fwd")):
            r = exmailctl(config, *args)
            assert r.returncode == 0, r.stderr
        gen = exmailctl(config, "dkim", "generate", "example.test")
        assert gen.returncode == 0, gen.stderr
        name, value = parse_dns_line(gen.stdout)
        records = {name: value}
        tdns.records.update(records)  # inbound checks and the test's verifier see the same
        daemon = Daemon(config, ports, tmp_path)
        daemon.start()
        try:
            def mx(message: bytes) -> None:
                with smtplib.SMTP("127.0.0.1", ports["smtp"],
                                  local_hostname="mail.sender.test") as s:
                    s.sendmail("carol@sender.test", ["alice@example.test"], message)

            first = signed(records, "q4")
            tdns.records.update(records)
            mx(first)
            out = wait_for_mail(sink, 1)

            def dnsfunc(qname: bytes, timeout: float = 5) -> bytes | None:
                v = records.get(qname.decode().rstrip(".").lower())
                return v.encode() if v is not None else None

            cv, results, why = dkim.arc_verify(out, dnsfunc=dnsfunc)
            assert cv == b"pass", why
            assert [x["instance"] for x in results] == [1]
            assert results[0]["as-domain"] == b"example.test"
            assert out.count(b"ARC-Seal:") == 1 and b"cv=none" in out
            aar = aar_of(out)
            assert aar.startswith(b"i=1; mx.example.test;") and b"spf=" in aar
            assert b"dkim=pass header.d=sender.test" in aar
            # The original DKIM signature still verifies; the forward is DKIM-signed too.
            assert dkim.verify(out, dnsfunc=dnsfunc)
            # Tampering with the body breaks the chain (the AMS covers it).
            bad, _, _ = dkim.arc_verify(out.replace(b"figures", b"fugures"), dnsfunc=dnsfunc)
            assert bad == b"fail"

            # A message a list already sealed: our set continues the chain.
            second = list_sealed(records, signed(records, "q4b"))
            tdns.records.update(records)
            mx(second)
            out2 = wait_for_mail(sink, 2)
            cv, results, why = dkim.arc_verify(out2, dnsfunc=dnsfunc)
            assert cv == b"pass", why
            assert sorted(x["instance"] for x in results) == [1, 2]
            assert b"i=2; cv=pass" in out2.replace(b"\r\n ", b" ")
            assert aar_of(out2).startswith(b"i=2; mx.example.test;")
            assert b"arc=pass" in aar_of(out2)

            # A group passing mail to an outside member keeps the sender: the
            # domain of our host name (mx.example.test) seals.
            r = exmailctl(config, "group", "add", "team@example.test", "--external",
                          "dave@far.test")
            assert r.returncode == 0, r.stderr
            with smtplib.SMTP("127.0.0.1", ports["smtp"], local_hostname="mail.sender.test") as s:
                s.sendmail("carol@sender.test", ["team@example.test"], signed(records, "grp"))
            out3 = wait_for_mail(sink, 3)
            assert sink.messages()[2][1] == ["dave@far.test"]
            cv, results, why = dkim.arc_verify(out3, dnsfunc=dnsfunc)
            assert cv == b"pass" and results[0]["as-domain"] == b"example.test", why
        finally:
            daemon.stop()
        log = daemon.log.read_text()
        assert "ARC sealed by example.test" in log
    finally:
        sink.close()
        tdns.close()


def test_submitted_mail_is_not_sealed(cfg: Config, tmp_path: Path) -> None:
    """Mail a member writes is signed, not sealed: nothing of ours to vouch for."""
    sink, tdns = Sink(), ThreadDNS()
    config, ports = write_config(tmp_path, db_url=cfg.database.url, mailauth={"enabled": True},
                                 queue={"relayhost": f"[127.0.0.1]:{sink.port}",
                                        "scan_interval": 0.3, "connect_timeout": 2,
                                        "dns_servers": [tdns.server], "dns_timeout": 1})
    try:
        assert exmailctl(config, "domain", "add", "example.test").returncode == 0
        assert exmailctl(config, "user", "add", "alice@example.test", "--password-stdin",
                         stdin=PASSWORD + "\n").returncode == 0
        assert exmailctl(config, "dkim", "generate", "example.test").returncode == 0
        daemon = Daemon(config, ports, tmp_path)
        daemon.start()
        try:
            with smtplib.SMTP("127.0.0.1", ports["submission"]) as s:
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["bob@remote.test"],
                           b"From: <alice@example.test>\r\nTo: <bob@remote.test>\r\n"
                           b"Subject: hi\r\n\r\nHello.\r\n")
            out = wait_for_mail(sink, 1)
        finally:
            daemon.stop()
        assert out.startswith(b"DKIM-Signature:") and b"ARC-" not in out
    finally:
        sink.close()
        tdns.close()


def test_no_seal_without_inbound_checks(cfg: Config, tmp_path: Path) -> None:
    """With [mailauth] off nobody removes a forged A-R claiming our name: a
    forward must not vouch for it."""
    sink, tdns = Sink(), ThreadDNS()
    config, ports = write_config(tmp_path, db_url=cfg.database.url,
                                 queue={"relayhost": f"[127.0.0.1]:{sink.port}",
                                        "scan_interval": 0.3, "connect_timeout": 2,
                                        "dns_servers": [tdns.server], "dns_timeout": 1})
    try:
        assert exmailctl(config, "domain", "add", "example.test").returncode == 0
        assert exmailctl(config, "user", "add", "alice@example.test", "--password-stdin",
                         stdin=PASSWORD + "\n").returncode == 0
        script = tmp_path / "fwd.sieve"
        script.write_text('redirect "bob@remote.test";\n')
        assert exmailctl(config, "sieve", "put", "alice@example.test", "fwd",
                         str(script)).returncode == 0
        assert exmailctl(config, "sieve", "activate", "alice@example.test", "fwd").returncode == 0
        assert exmailctl(config, "dkim", "generate", "example.test").returncode == 0
        daemon = Daemon(config, ports, tmp_path)
        daemon.start()
        try:
            forged = (b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
                      b"From: <ceo@bank.test>\r\nTo: <alice@example.test>\r\nSubject: pay\r\n"
                      b"\r\nPay now.\r\n")
            with smtplib.SMTP("127.0.0.1", ports["smtp"], local_hostname="x.test") as s:
                s.sendmail("ceo@bank.test", ["alice@example.test"], forged)
            out = wait_for_mail(sink, 1)
        finally:
            daemon.stop()
        assert b"ARC-" not in out and b"DKIM-Signature:" in out
    finally:
        sink.close()
        tdns.close()

"""The daemon's logs as an operator reads them (issue 11, item 5): typed JSON
mail fields, one message-id= line per message, the listener a message came
in on, start-up lines in order without Twisted's factory noise, one line at
shutdown. Real daemon, real SMTP client."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

from .daemon import Daemon, exmailctl, write_config


def test_mail_log_fields_and_daemon_lifecycle_lines(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    assert exmailctl(config, "domain", "add", "example.test").returncode == 0
    r = exmailctl(config, "user", "add", "bob@example.test", "--password", "Secr3tPass")
    assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@remote.test", "bob@example.test", "hi"
        msg["Message-ID"] = "<ops-log-1@remote.test>"
        msg.set_content("hello\n")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            reply = s.send_message(msg)
            assert reply == {}
            s.noop()
    finally:
        d.stop()  # twistd ends by re-raising SIGTERM
    out = d.output()

    recs = [json.loads(ln) for ln in
            (tmp_path / "var" / "log" / "exmaild.json").read_text().splitlines()]
    mail = [r for r in recs if r.get("namespace") == "exmaild.maillog"]
    (qid,) = {r["queue_id"] for r in mail}
    by = {k: [r for r in mail if f"mail_{k}" in r] for k in
          ("client", "message_id", "from", "to")}
    assert [r["text"] for r in by["message_id"]] == [f"{qid}: message-id=<ops-log-1@remote.test>"]
    assert by["message_id"][0]["mail_message_id"] == "ops-log-1@remote.test"
    (client,) = by["client"]
    assert client["mail_listener"] == "smtp" and ", listener=smtp" in client["text"]
    (frm,) = by["from"]
    assert frm["mail_nrcpt"] == 1 and frm["mail_nrcpt_text"] == "queue active"
    assert isinstance(frm["mail_size"], int) and frm["mail_size"] > 100
    (to,) = by["to"]
    assert isinstance(to["mail_delay"], float) and to["mail_delay"] >= 0
    assert to["mail_status"] == "sent" and to["mail_status_text"] == "delivered to mailbox"
    assert "status=sent (delivered to mailbox)" in to["text"]  # the text line is Postfix's
    assert f"{qid}: message-id=<ops-log-1@remote.test>" in out

    # Start-up in the order things happen, without `Starting factory <... at 0x...>`.
    assert "Starting factory" not in out and "Stopping factory" not in out
    assert " at 0x" not in out
    starting = out.index("exmaild 0.1.0 starting: config ")
    listening = out.index("listening for smtp on 127.0.0.1:")
    started = out.index("exmaild 0.1.0 started")
    assert starting < listening < started
    # One line at shutdown, after everything stopped.
    assert out.count("exmaild stopped after ") == 1
    assert out.index("exmaild stopped after ") > started
    stopped = [r for r in recs if r.get("text", "").startswith("exmaild stopped after ")]
    assert len(stopped) == 1 and isinstance(stopped[0]["uptime_seconds"], float)

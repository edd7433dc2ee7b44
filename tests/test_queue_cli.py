"""`exmailctl queue ...` against a running daemon (twistd subprocess) whose
queue runner delivers to Postfix's smtp-sink through a relayhost."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from exmaild.config import load_config
from exmaild.mailstore.service import MailStore
from exmaild.store import model as m

from .conftest import free_port, table_count
from .daemon import Daemon, exmailctl, write_config
from .queuelab import SMTP_SINK, Sink, message, queue_mail, statuses, wait_for


@pytest.mark.skipif(not Path(SMTP_SINK).exists(), reason="postfix smtp-sink missing")
@pytest_twisted.ensureDeferred
async def test_queue_commands_with_a_running_daemon(tmp_path: Path) -> None:
    port = free_port()
    config, ports = write_config(tmp_path, queue={
        "relayhost": f"[127.0.0.1]:{port}", "scan_interval": 0.3, "retry_schedule": [3600],
        "connect_timeout": 2,
    })
    # Mail queued by another process (as the SMTP server would); the daemon
    # finds it at its next scan and defers it: nothing listens on the relay yet.
    store = MailStore(load_config(str(config)), reactor)
    store.open()  # creates the schema
    store.startService()
    daemon = Daemon(config, ports, tmp_path)
    sink = Sink(tmp_path / "sink", port)
    try:
        q1 = await queue_mail(store, "alice@example.test", ["bob@remote.test", "carol@x.test"],
                              message("First one"))
        q2 = await queue_mail(store, "", ["dave@remote.test"], message("Second"))
        daemon.start()

        def all_in(qid: str, status: str) -> bool:
            st = statuses(store, qid)
            return bool(st) and all(s == status for s, _ in st.values())

        await wait_for(lambda: all_in(q1, "deferred") and all_in(q2, "deferred"))

        listing = exmailctl(config, "queue", "list")
        assert listing.returncode == 0, listing.stderr
        text = listing.stdout
        assert text.startswith("-Queue ID-")
        assert q1 in text and q2 in text and "alice@example.test" in text
        assert "MAILER-DAEMON" in text  # the null sender
        assert "bob@remote.test  [deferred, 1 attempt(s), next try" in text
        assert f"(connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused)" in text
        assert "in 2 Requests." in text

        show = exmailctl(config, "queue", "show", q1.lower())
        assert show.returncode == 0, show.stderr
        for expected in (f"queue id:     {q1}", "sender:       <alice@example.test>",
                         "<carol@x.test>: deferred, 1 attempt(s)", "Connection refused",
                         "  Subject: First one"):
            assert expected in show.stdout
        assert "Return-Path" not in show.stdout  # the headers as they will be sent
        bad = exmailctl(config, "queue", "show", "NOSUCHID")
        assert bad.returncode == 1 and "no message NOSUCHID" in bad.stderr

        # delete: gone, with its content reference.
        contents = table_count(store, m.contents)
        out = exmailctl(config, "queue", "delete", q2)
        assert out.returncode == 0 and f"{q2}: removed" in out.stdout
        assert statuses(store, q2) == {}
        assert table_count(store, m.contents) == contents - 1

        # retry: the relay is up now; the daemon delivers within a scan or two.
        sink.start()
        out = exmailctl(config, "queue", "retry", q1)
        assert out.returncode == 0 and "2 recipient(s) due now" in out.stdout
        await wait_for(lambda: all_in(q1, "sent"), timeout=10)
        assert len(sink.messages()) == 1
        assert "bob@remote.test  [sent]" in exmailctl(config, "queue", "list", "--all").stdout

        # flush: mail deferred while the relay was down goes once flushed.
        sink.stop()
        q3 = await queue_mail(store, "alice@example.test", ["erin@remote.test"], message("Third"))
        await wait_for(lambda: all_in(q3, "deferred"))
        sink.start()
        out = exmailctl(config, "queue", "flush")
        assert out.returncode == 0 and "1 recipient(s) due now" in out.stdout
        await wait_for(lambda: all_in(q3, "sent"), timeout=10)
        assert "Mail queue is empty" in exmailctl(config, "queue", "list").stdout

        log = daemon.wait_for_log("status=sent (250 2.0.0 Ok)")
        assert f"{q1}: to=<bob@remote.test>, relay=127.0.0.1[127.0.0.1]:{port}" in log
        assert f"{q1}: removed" in log and "status=sent (250 2.0.0 Ok)" in log
        assert "Traceback" not in log
    finally:
        daemon.kill()
        sink.stop()
        store.stopService()

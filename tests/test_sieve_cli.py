"""`exmailctl sieve put|activate|get|list` in the contract forms of issue 13:
the handlers in process (argv parsed by the real parser), and one real
`exmailctl` subprocess on the same database."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from exmaild.cli import _COMMANDS, build_parser
from exmaild.config import load_config
from exmaild.mailstore.service import MailStore

from .daemon import exmailctl, write_config

SCRIPT = 'require ["fileinto"];\nif header :is "subject" "x" {\n  fileinto "X";\n}\n'


async def run(store: MailStore, *argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    return await _COMMANDS[(args.group, args.cmd)](store, args)


@pytest_twisted.ensureDeferred
async def test_sieve_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = write_config(tmp_path)
    store = MailStore(load_config(str(config)), reactor)
    store.open()
    store.startService()
    try:
        await store.directory.add_domain("acme.test")
        await store.directory.add_account("ann@acme.test", None)
        good = tmp_path / "good.sieve"
        good.write_text(SCRIPT)
        bad = tmp_path / "bad.sieve"
        bad.write_text('require "fileinto";\nif true {\n  fileinto "X"\n}\n')
        capsys.readouterr()
        assert await run(store, "sieve", "put", "ann@acme.test", "broken", str(bad)) == 1
        err = capsys.readouterr().err
        assert "line 4, column 1" in err and len(err.strip().splitlines()) == 1, err
        assert await run(store, "sieve", "put", "ann@acme.test", "main", str(good)) == 0
        assert await run(store, "sieve", "put", "ann@acme.test", "other", str(good)) == 0
        assert await run(store, "sieve", "activate", "ann@acme.test", "main") == 0
        capsys.readouterr()
        assert await run(store, "sieve", "get", "ann@acme.test", "main") == 0
        assert capsys.readouterr().out == SCRIPT
        assert await run(store, "sieve", "activate", "ann@acme.test", "nosuch") == 1
        assert "no script named 'nosuch'" in capsys.readouterr().err
        assert await run(store, "sieve", "list", "nobody@acme.test") == 1
        # A member's sender lists.
        assert await run(store, "filter", "add", "ann@acme.test", "block", "@Spam.Test") == 0
        assert await run(store, "filter", "add", "ann@acme.test", "block", "x@evil.test",
                         "--refuse") == 0
        assert await run(store, "filter", "add", "ann@acme.test", "allow", "ok@spam.test") == 0
        assert await run(store, "filter", "add", "ann@acme.test", "allow", "not valid") == 1
        assert "not an address or domain" in capsys.readouterr().err
        assert await run(store, "filter", "list", "ann@acme.test") == 0
        assert capsys.readouterr().out == (
            "allow\tok@spam.test\nblock\tspam.test\tjunk\nblock\tx@evil.test\trefuse\n")
        assert await run(store, "filter", "remove", "ann@acme.test", "block", "spam.test") == 0
        assert await run(store, "filter", "remove", "ann@acme.test", "block", "spam.test") == 1
        # Structured rules are the exmail-rules Sieve script, activated.
        rule = ('{"name": "Boss", "conditions": [{"field": "from", "op": "contains", '
                '"value": "boss@"}], "actions": [{"type": "move", "value": "Boss"}, '
                '{"type": "tag", "value": "$Boss"}]}')
        assert await run(store, "rules", "add", "ann@acme.test", rule) == 0
        assert await run(store, "rules", "add", "ann@acme.test",
                         '{"conditions": [], "actions": []}') == 1
        assert "at least one condition" in capsys.readouterr().err
        assert await run(store, "rules", "add", "ann@acme.test", rule.replace("Boss", "B2")) == 0
        assert await run(store, "rules", "disable", "ann@acme.test", "2") == 0
        capsys.readouterr()
        assert await run(store, "rules", "list", "ann@acme.test") == 0
        assert capsys.readouterr().out == "1\ton\tBoss\n2\toff\tB2\n"
        assert await run(store, "sieve", "get", "ann@acme.test", "exmail-rules") == 0
        sieve = capsys.readouterr().out
        assert 'if header :contains "from" "boss@" {\n  addflag "$Boss";\n' \
               '  fileinto "Boss";\n}\n' in sieve
        # Edited over the Sieve face: the structured face shows it as custom
        # and will not overwrite it.
        edited = tmp_path / "edited.sieve"
        edited.write_text(sieve.replace('fileinto "Boss"', 'fileinto "Chief"'))
        assert await run(store, "sieve", "put", "ann@acme.test", "exmail-rules",
                         str(edited)) == 0
        capsys.readouterr()
        assert await run(store, "rules", "list", "ann@acme.test") == 0
        assert capsys.readouterr().out == "1\ton\tBoss\tcustom\n2\toff\tB2\n"
        assert await run(store, "rules", "remove", "ann@acme.test", "2") == 1
        assert "rule 1 was edited in Sieve" in capsys.readouterr().err
        await _run_on_folder(store, capsys)
    finally:
        store.stopService()
    # The real command, once: what a script sees.
    r = exmailctl(config, "sieve", "list", "ann@acme.test")
    assert (r.returncode, r.stdout) == (0, "exmail-rules\tactive\nmain\nother\n"), r.stderr


async def _run_on_folder(store: MailStore, capsys: pytest.CaptureFixture[str]) -> None:
    """`rules run`: a rule applied to mail already in a folder."""
    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.store import imapfolders

    from .test_sieve_delivery import placed

    bo = await store.directory.add_account("bo@acme.test", None)
    await store.pool.transaction(lambda c: imapfolders.create(c, bo.id, "Invoices"))
    for n, subject in enumerate(("Invoice 1", "hello", "invoice 2", "spam offer")):
        raw = (f"Return-Path: <x@remote.test>\r\nFrom: <x@remote.test>\r\n"
               f"Subject: {subject}\r\nMessage-ID: <{n}@remote.test>\r\n\r\nbody\r\n")
        await store.ingestor.ingest(IngestRequest(raw.encode(), [Target(bo.id)]))
    rule = ('{"name": "inv", "conditions": [{"field": "subject", "op": "contains", '
            '"value": "invoice"}], "actions": [{"type": "move", "value": "Invoices"}, '
            '{"type": "mark_read"}]}')
    spam = ('{"name": "spam", "conditions": [{"field": "subject", "op": "contains", '
            '"value": "offer"}], "actions": [{"type": "delete"}]}')
    assert await run(store, "rules", "add", "bo@acme.test", rule) == 0
    assert await run(store, "rules", "add", "bo@acme.test", spam) == 0
    capsys.readouterr()
    assert await run(store, "rules", "run", "bo@acme.test", "1", "INBOX") == 0
    assert capsys.readouterr().out == (
        "4 examined, 2 matched: 2 moved, 0 copied, 2 flagged, 0 deleted\n")
    assert await run(store, "rules", "run", "bo@acme.test", "2", "INBOX") == 0
    assert "1 deleted" in capsys.readouterr().out
    assert await run(store, "rules", "run", "bo@acme.test", "2", "Nope") == 1

    class Lab:  # what `placed` reads
        pass

    lab = Lab()
    lab.store = store  # type: ignore[attr-defined]
    got = placed(lab, "bo@acme.test")  # type: ignore[arg-type]
    assert [(b, s, f) for b, s, f, _ in got] == [
        ("Deleted", "spam offer", 0), ("INBOX", "hello", 0), ("Invoices", "Invoice 1", 1),
        ("Invoices", "invoice 2", 1)]

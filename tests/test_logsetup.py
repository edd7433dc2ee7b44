"""The log observers: twistd's line format, JSON lines, batching, levels."""

from __future__ import annotations

import dataclasses
import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher, formatEventAsClassicLogText

from exmaild import logsetup
from exmaild.config import LogConfig, load_config


def observed(level: str = "info") -> tuple[Logger, io.StringIO, io.StringIO, list]:
    cfg = dataclasses.replace(load_config(None), log=LogConfig(level=level))
    text, js = io.StringIO(), io.StringIO()
    obs = [logsetup.text_observer(text, cfg), logsetup.JSONLinesObserver(js, LogLevel.info)]
    events: list = []
    publisher = LogPublisher(*obs, events.append)
    return Logger(namespace="exmaild.test", observer=publisher), text, js, obs


def test_lines_match_twisteds_format_and_wait_for_a_flush(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    log, text, js, obs = observed()
    monkeypatch.setattr(logsetup, "_maillog", Logger(namespace="exmaild.maillog",
                                                     observer=log.observer))
    log.info("listening for {svc} on {where}", svc="smtp", where="127.0.0.1:25")
    logsetup.maillog("4F2A9C1B7E", **{"from": "a@x.test", "size": 4096, "nrcpt": "1"})
    assert text.getvalue() == "" and js.getvalue() == ""  # batched, not one write a line
    for o in obs:
        o.flush()
    lines = text.getvalue().splitlines(keepends=True)
    assert lines[0].endswith(" [exmaild.test#info] listening for smtp on 127.0.0.1:25\n")
    assert lines[1].endswith(
        " [exmaild.maillog#info] 4F2A9C1B7E: from=<a@x.test>, size=4096, nrcpt=1\n")
    # The same line Twisted's own formatter makes for that event.
    event = {"log_format": "{queue_id}: {text}", "log_level": LogLevel.info,
             "log_namespace": "exmaild.maillog", "log_time": 1_800_000_000.5,
             "queue_id": "Q1", "text": "to=<b@x.test>", "log_text": "Q1: to=<b@x.test>"}
    assert obs[0].render(event, "info") == formatEventAsClassicLogText(event)
    recs = [json.loads(x) for x in js.getvalue().splitlines()]
    assert recs[1]["text"] == "4F2A9C1B7E: from=<a@x.test>, size=4096, nrcpt=1"
    assert recs[1]["mail_size"] == 4096 and recs[1]["level"] == "info"


def test_warnings_are_written_at_once_and_levels_filter() -> None:
    log, text, js, obs = observed(level="warn")
    log.info("not shown")
    log.warn("disk {pct}% full", pct=97)
    assert "not shown" not in text.getvalue()
    assert text.getvalue().endswith("[exmaild.test#warn] disk 97% full\n")


def test_after_stopping_every_line_is_written_at_once() -> None:
    log, text, js, obs = observed()
    flusher = logsetup.LogFlusher(obs)
    flusher.startService()
    flusher.stopService()
    log.info("Server Shut Down.")
    assert text.getvalue().endswith("Server Shut Down.\n")

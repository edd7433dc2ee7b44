"""Log observers through write errors (a full disk): they drop and count what
they could not write, say so once each way, and the periodic flush goes on."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.logger import Logger, LogLevel, LogPublisher

from exmaild import logsetup


class FullDisk(io.StringIO):
    """A stream whose writes fail while `full` (as write(2) on a full disk)."""

    name = "/var/log/exmaild/exmaild.json"
    full = False

    def write(self, s: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(s)


def test_observers_survive_write_errors_and_say_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    disk, console = FullDisk(), io.StringIO()
    json_obs = logsetup.JSONLinesObserver(disk, LogLevel.info)  # type: ignore[arg-type]
    text_obs = logsetup.TextLinesObserver(console, LogLevel.info)
    publisher = LogPublisher(json_obs, text_obs)
    monkeypatch.setattr(logsetup, "_log", Logger(namespace="exmaild.log", observer=publisher))
    log = Logger(namespace="exmaild.test", observer=publisher)
    clock = task.Clock()
    flusher = logsetup.LogFlusher([json_obs, text_obs])
    flusher.clock = clock
    flusher.startService()

    log.info("before")
    clock.advance(logsetup.FLUSH_INTERVAL)
    disk.full = True
    log.error("an error while full")  # written at once: fails
    for i in range(5):
        log.info("line {i}", i=i)
        clock.advance(logsetup.FLUSH_INTERVAL)  # the periodic flush fails, and goes on
    assert flusher.running
    said = console.getvalue()
    assert said.count("writing the log to /var/log/exmaild/exmaild.json failed") == 1
    assert "No space left on device" in said

    disk.full = False
    log.info("after")
    clock.advance(logsetup.FLUSH_INTERVAL)
    texts = [json.loads(line)["text"] for line in disk.getvalue().splitlines()]
    assert texts[0] == "before" and texts[-2] == "after"
    assert texts[-1].startswith("writing the log to /var/log/exmaild/exmaild.json works again")
    assert "7 line(s) were lost" in texts[-1]  # the error, five lines, the failure notice
    assert console.getvalue().count("works again after") == 1
    flusher.stopService()


def test_a_log_file_keeps_whole_lines_after_a_partial_write(tmp_path: Path) -> None:
    out = logsetup.AppendFile(tmp_path / "x.log")
    out.write("one\n")
    out._torn = True  # as after a write cut short by a full disk (see test_disk_full.py)
    out.write("two\n")
    out.close()
    assert (tmp_path / "x.log").read_text() == "one\n\ntwo\n"

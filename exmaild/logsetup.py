"""Logging: readable lines for people, JSON lines for machines, mail lines for ops.

`maillog` emits one Postfix-style line per mail transaction or delivery
attempt, keyed by queue id, so `tail -f | grep QUEUEID` follows a message:

    4F2A9C1B7E: from=<a@x.test>, size=4096, nrcpt=2 (queue active)
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

from twisted.application.internet import TimerService
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

from exmaild.config import Config

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}
_maillog = Logger(namespace="exmaild.maillog")


# Control characters (C0, DEL, C1, Unicode line and paragraph separators)
# in logged text are written as escapes: text from the network (a remote
# server's reply, a HELO name) must never start a forged line in the log.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """`text` with every control character escaped (`\\n`, `\\r`, `\\t`, `\\xNN`)."""
    return _CONTROLS.sub(_escape_one, text)


_BRACKETED = ("from", "to", "orig_to", "message-id")


def maillog(queue_id: str, **fields: Any) -> None:
    """One `QUEUEID: key=value, ...` line; values in <> for addresses as Postfix does.

    The JSON log gets each field typed (see `typed_fields`), as `mail_<key>`.
    """
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        v = escape_controls(str(v))
        if k in _BRACKETED:
            parts.append(f"{k}=<{v}>")
        else:
            parts.append(f"{k}={v}")
    text = ", ".join(parts)
    _maillog.info("{queue_id}: {text}", queue_id=queue_id, text=text,
                  log_text=f"{queue_id}: {text}", **typed_fields(fields))


# "sent (delivered to mailbox)", "1 (queue active)": a word or number, then text.
_WORD_AND_TEXT = re.compile(r"^(\S+)(?: \((.*)\))?$", re.S)


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def typed_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON fields of a mail line: numbers as numbers (`mail_nrcpt: 1`,
    `mail_delay: 0.18`, `mail_size: 4096`), the status word apart from its
    text (`mail_status: "sent"`, `mail_status_text: "delivered to mailbox"`),
    `-` in names as `_` (`mail_message_id`)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if v is None:
            continue
        key = "mail_" + k.replace("-", "_")
        if k in ("nrcpt", "status") and isinstance(v, str):
            m = _WORD_AND_TEXT.match(v)
            if m:
                word, rest = m.group(1), m.group(2)
                out[key] = _number(word) if k == "nrcpt" else word
                if rest is not None:
                    out[f"{key}_text"] = rest
                continue
        if k in ("size", "delay", "delays", "nrcpt") and isinstance(v, str):
            out[key] = _number(v)
            continue
        out[key] = v
    return out


# Log lines are written in batches (one write per FLUSH_INTERVAL, or sooner
# when FLUSH_BYTES gather), not one write(2) per line: at hundreds of messages
# a second the per-line syscalls were a visible share of the reactor's CPU.
# Warnings and errors are written at once.
FLUSH_INTERVAL = 0.25
FLUSH_BYTES = 64 * 1024
_PLAIN = (str, int, float, bool, type(None))
_log = Logger(namespace="exmaild.log")


class AppendFile:
    """A log file written with write(2) on an O_APPEND descriptor.

    Nothing is kept after a failed write (a TextIOWrapper would hold the
    bytes in its buffer and write them later, torn); a line a failed write
    left half done is ended before the next one, so later lines stay whole.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = str(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._torn = False

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        view = memoryview(b"\n" + data if self._torn else data)
        done = 0
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                done += n
        except OSError:
            if done:
                self._torn = True
            raise
        self._torn = False
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@implementer(ILogObserver)
class BatchedLineObserver(ABC):
    """Renders events at or above `level` as lines and writes them in batches."""

    def __init__(self, out: IO[str], level: LogLevel) -> None:
        self._out = out
        order = list(LogLevel.iterconstants())
        self._names = {lv: lv.name for lv in order[order.index(level):]}
        self._urgent = {LogLevel.warn, LogLevel.error, LogLevel.critical}
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        # Set once the daemon is stopping: twistd ends by re-raising the
        # signal it stopped on, so nothing held back would be written.
        self.write_through = False
        # Lines lost to write errors (a full disk): counted, not retried, so
        # that memory stays bounded and the observer stays in place (Twisted
        # removes an observer that raises).
        self.dropped = 0
        self._failing: str | None = None

    @abstractmethod
    def render(self, event: dict[str, Any], level: str) -> str | None:
        """The line for one event (with its newline), or None for none."""

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        name = self._names.get(level)  # type: ignore[arg-type]
        if name is None:
            return
        line = self.render(event, name)
        if not line:
            return
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            if self._size < FLUSH_BYTES and level not in self._urgent and not self.write_through:
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
            if not lines:
                return
            try:
                self._out.write("".join(lines))
                self._out.flush()
            except (OSError, ValueError) as e:  # ValueError: a closed stream
                self.dropped += len(lines)
                failed, was = str(e), self._failing
                self._failing = failed
                recovered = None
            else:
                failed, was = None, self._failing
                recovered, self._failing = self._failing, None
        # Said once each way, outside the lock: the event comes back here.
        if failed is not None and was is None:
            _log.error("writing the log to {target} failed ({error}); dropping lines until "
                       "it works again", target=self._target(), error=failed)
        elif recovered is not None:
            _log.warn("writing the log to {target} works again after {error}; {dropped} "
                      "line(s) were lost", target=self._target(), dropped=self.dropped,
                      error=recovered)

    def _target(self) -> str:
        return str(getattr(self._out, "name", None) or type(self._out).__name__)

    # The file this observer writes to, when it owns one ([log] file, the
    # JSON log): reopen() opens it again after logrotate renamed it.
    path: Path | None = None

    def reopen(self) -> None:
        """Write what is held to the old file, then go on in a new one at `path`."""
        if self.path is None:
            return
        self.flush()
        new = AppendFile(self.path)  # the same kind of file the observer was made with
        with self._lock:
            old, self._out = self._out, new
        old.close()


def reopen_all(observers: list[ILogObserver]) -> list[str]:
    """Reopen every observer's own file (SIGHUP, SIGUSR1); the paths reopened."""
    done = []
    for o in observers:
        if isinstance(o, BatchedLineObserver) and o.path is not None:
            o.reopen()
            done.append(str(o.path))
    return done


class JSONLinesObserver(BatchedLineObserver):
    """One JSON object per line: time (epoch seconds), level, namespace, the
    formatted text, and the event's own fields (non-JSON values as repr)."""

    def render(self, event: dict[str, Any], level: str) -> str | None:
        rec: dict[str, Any] = {
            k: v if isinstance(v, _PLAIN) else repr(v)
            for k, v in event.items()
            if not k.startswith("log_")
        }
        text = event.get("log_text")  # maillog's lines come formatted
        # The record's own keys win over event fields of the same name.
        rec["time"] = round(event.get("log_time") or 0.0, 6)
        rec["level"] = level
        rec["namespace"] = event.get("log_namespace")
        rec["text"] = text if text is not None else formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            rec["traceback"] = failure.getTraceback()
        line = json.dumps(rec, ensure_ascii=False, default=repr)
        # JSON escapes C0 controls itself; these three end a line for some readers.
        if "\x85" in line or "\u2028" in line or "\u2029" in line:
            line = line.translate(_JSON_LINE_ENDS)
        return line + "\n"


_JSON_LINE_ENDS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class TextLinesObserver(BatchedLineObserver):
    """twistd's classic lines (`2026-11-27T10:00:00+0800 [system] text`),
    formatted by Twisted itself, except that mail lines (which come with
    their text) skip Twisted's formatter and the time is made once a second:
    Twisted's per-line formatting was ~20% of the daemon's CPU per SMTP
    message (bench/smtp_ingest.py, 3 mail lines per message)."""

    _second = -1
    _stamp = "-"

    def _time(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    def render(self, event: dict[str, Any], level: str) -> str | None:
        # Formatted first, then escaped: every field value, whatever its type,
        # is on one line (our format strings have no control characters).
        text = event.get("log_text")
        if text is None:
            text = formatEvent(event)
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        if "log_worker" in event:  # a worker process's own line (exmaild/workers/)
            system = f"worker{event['log_worker']} {system}"
        if "log_failure" in event:
            # Twisted's form: the traceback follows on lines starting with a tab.
            safe = {**event, "log_format": "{log_text}", "log_text": escape_controls(text),
                    "log_system": escape_controls(system)}
            out = formatEventAsClassicLogText(safe, formatTime=self._time)
            return _CONTROLS_BUT_LINES.sub(_escape_one, out) if out else None
        if not text:
            return None
        stamp = self._time(event.get("log_time"))
        return f"{stamp} [{escape_controls(system)}] {escape_controls(text)}\n"


class LogFlusher(TimerService):
    """Writes the batched log lines every FLUSH_INTERVAL and when stopping."""

    def __init__(self, observers: list[ILogObserver]) -> None:
        self._targets = [o for o in observers if isinstance(o, BatchedLineObserver)]
        super().__init__(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        for o in self._targets:
            try:
                o.flush()
            except Exception:  # noqa: S110 -- an exception would stop the timer for good
                pass

    def stopService(self) -> Any:
        d = super().stopService()
        for o in self._targets:
            o.write_through = True
            o.flush()
        return d


def text_observer(out: IO[str], cfg: Config) -> TextLinesObserver:
    """The readable log on `out` (twistd's stdout under `twistd -n`)."""
    obs = TextLinesObserver(out, _LEVELS[cfg.log.level])
    atexit.register(obs.flush)
    return obs


def observers(cfg: Config, text_out: io.TextIOBase | None = None) -> list[ILogObserver]:
    """The text observer (stdout or [log] file) and the JSON-lines observer."""
    obs: list[ILogObserver] = []
    if cfg.log.file:
        path = cfg.resolve(cfg.log.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        text_out = AppendFile(path)  # type: ignore[assignment]
    if text_out is not None:
        obs.append(text_observer(text_out, cfg))
        if cfg.log.file:
            obs[-1].path = path
    if cfg.log.json_file != "-":
        json_path = cfg.resolve(cfg.log.json_file) if cfg.log.json_file else (
            cfg.data_dir / "log" / "exmaild.json"
        )
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        json_file: Any = AppendFile(json_path)
        json_obs = JSONLinesObserver(json_file, _LEVELS[cfg.log.level])
        json_obs.path = Path(json_path)
        atexit.register(json_obs.flush)  # what the last interval gathered
        obs.append(json_obs)
    return obs

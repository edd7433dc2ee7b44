"""Logging: readable lines for people, JSON lines for machines, mail lines for ops.

`maillog` emits one Postfix-style line per mail transaction or delivery
attempt, keyed by queue id, so `tail -f | grep QUEUEID` follows a message:

    4F2A9C1B7E: from=<a@x.test>, size=4096, nrcpt=2 (queue active)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from exmaild.config import Config

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}
_maillog = Logger(namespace="exmaild.maillog")


def maillog(queue_id: str, **fields: Any) -> None:
    """One `QUEUEID: key=value, ...` line; values in <> for addresses as Postfix does."""
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        if k in ("from", "to", "orig_to"):
            parts.append(f"{k}=<{v}>")
        else:
            parts.append(f"{k}={v}")
    _maillog.info("{queue_id}: {text}", queue_id=queue_id, text=", ".join(parts), **{
        f"mail_{k}": v for k, v in fields.items()
    })


def observers(cfg: Config, text_out: io.TextIOBase | None = None) -> list[ILogObserver]:
    """The text observer (stdout or [log] file) and the JSON-lines observer."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[cfg.log.level])
    obs: list[ILogObserver] = []
    if cfg.log.file:
        path = cfg.resolve(cfg.log.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        text_out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    if text_out is not None:
        obs.append(FilteringLogObserver(textFileLogObserver(text_out), [predicate]))
    if cfg.log.json_file != "-":
        json_path = cfg.resolve(cfg.log.json_file) if cfg.log.json_file else (
            cfg.data_dir / "log" / "exmaild.json"
        )
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(json_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        obs.append(FilteringLogObserver(jsonFileLogObserver(fh), [predicate]))
    return obs


def start_logging(cfg: Config) -> None:
    """For processes not run by twistd (the CLI logs to stderr)."""
    globalLogBeginner.beginLoggingTo(observers(cfg, sys.stderr), redirectStandardIO=False)

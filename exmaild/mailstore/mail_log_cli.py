"""`exmailctl log mail`: the mail log, one recipient a line (tab-separated,
oldest first)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from exmaild.auth.cli import _actor, _out, _when
from exmaild.directory.errors import Invalid


def _day(text: str, what: str) -> int:
    import datetime as dt

    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{what} {text!r}: use YYYY-MM-DD") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


async def log_mail(store: Any, a: argparse.Namespace) -> int:
    from exmaild.directory.service import DirectoryService
    from exmaild.mailstore.mail_log_service import MailLogService

    svc = MailLogService(DirectoryService(store, store.cfg.directory))
    page = await svc.query(
        _actor(), enterprise=a.enterprise, member=a.account, direction=a.direction,
        status=a.status, subject=a.subject, since=_day(a.since, "--since") if a.since else None,
        limit=a.limit)
    for e in reversed(page["items"]):
        _out("\t".join((_when(e["time"]), e["direction"], e["queue_id"] or "-", e["sender"]
                        or "<>", e["recipient"], e["written_to"] or "-", e["status"],
                        str(e["size"]), e["subject"])))
    return 0


def add_parsers(log: Any, command: Callable[..., Any]) -> None:
    lm = log.add_parser("mail", help="the mail log: time, direction, queue id, sender, "
                        "recipient, address as written, status, size, subject "
                        "(tab-separated, oldest first)")
    lm.add_argument("--account", metavar="ADDRESS", help="sent or received by this address")
    lm.add_argument("--since", metavar="YYYY-MM-DD", help="from this day (UTC) on")
    lm.add_argument("--direction", choices=("in", "out"))
    lm.add_argument("--status", choices=("delivered", "queued", "deferred", "bounced",
                                         "refused", "junk"))
    lm.add_argument("--subject", help="part of the subject")
    lm.add_argument("--limit", type=int, default=1000, help="newest rows shown")
    lm.add_argument("--enterprise")
    command("log", "mail")(log_mail)

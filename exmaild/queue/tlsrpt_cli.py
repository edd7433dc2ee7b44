"""`exmailctl tlsrpt report DOMAIN [--day YYYY-MM-DD]`: the RFC 8460 JSON
report of a day's outbound TLS sessions to DOMAIN (queue/tlsrpt.py).

Hooked into exmaild/cli.py's parser by `add_parsers(sub, command)`, like
exmaild/mailauth/cli.py.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from typing import Any

from exmaild.queue import tlsrpt


async def tlsrpt_report(store: Any, a: argparse.Namespace) -> int:
    day = a.day or tlsrpt.today()
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        sys.stderr.write(f"exmailctl: --day {day!r} is not YYYY-MM-DD\n")
        return 2
    host = store.cfg.server.hostname
    text = await store.pool.do(lambda c: tlsrpt.report_json(c, a.domain, day, host))
    print(text)
    return 0


def add_parsers(sub: Any, command: Callable[[str, str], Callable[[Any], Any]]) -> None:
    tr = sub.add_parser("tlsrpt", help="TLS reporting (RFC 8460) of outbound delivery")
    tr = tr.add_subparsers(dest="cmd", required=True)
    rep = tr.add_parser("report", help="print a day's JSON report for a receiving domain")
    rep.add_argument("domain")
    rep.add_argument("--day", help="YYYY-MM-DD (UTC); default today")
    command("tlsrpt", "report")(tlsrpt_report)

"""`exmailctl filter catchall|catchall-list|backup-add|backup-list|backup-remove`:
an enterprise's catch-all for unknown addresses (manual §4.4.4.3) and its mail
backup rules (manual §4.4.6.1). Errors reach the CLI's handler."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from exmaild.sieve.backup import DIRECTIONS, BackupRules
from exmaild.sieve.catchall import CatchAll


async def _run(store: Any, a: argparse.Namespace) -> int:
    from exmaild.cli import _actor, _svc

    svc = _svc(store)
    if a.cmd == "catchall":
        off = a.target.lower() == "off"
        got = await CatchAll(svc).set(_actor(), a.domain, None if off else a.target)
        sys.stdout.write(f"catch-all of {got['domain']} off\n" if off else
                         f"unknown addresses of {got['domain']} go to {got['address']} "
                         f"({got['folder']})\n")
    elif a.cmd == "catchall-list":
        for e in await CatchAll(svc).list(_actor(), a.enterprise):
            sys.stdout.write(f"{e['domain']}\t{e['address']}\n")
    elif a.cmd == "backup-add":
        got = await BackupRules(svc).add(
            _actor(), sources=a.source, direction=a.direction, keywords=a.keywords or "",
            destination=a.destination, folder=a.folder, enterprise=a.enterprise)
        sys.stdout.write(f"backup rule {got['id']} added\n")
    elif a.cmd == "backup-list":
        for r in await BackupRules(svc).list(_actor(), a.enterprise):
            sys.stdout.write(f"{r['id']}\t{';'.join(r['sources'])}\t{r['direction']}\t"
                             f"{';'.join(r['keywords'])}\t{r['destination']}\t{r['folder']}\n")
    else:
        await BackupRules(svc).remove(_actor(), a.id, a.enterprise)
        sys.stdout.write(f"backup rule {a.id} removed\n")
    return 0


def add_parsers(fl: Any, command: Callable[[str, str], Callable[[Any], Any]]) -> None:
    """Sub-commands of `exmailctl filter` (`fl`: its subparsers)."""
    ca = fl.add_parser("catchall", help="mail to unknown addresses of DOMAIN goes to "
                       "ADDRESS's folder 邮件转移 ('off': refused again)")
    ca.add_argument("domain")
    ca.add_argument("target", metavar="ADDRESS|off")
    cl = fl.add_parser("catchall-list", help="domain and catch-all mailbox, one a line")
    ba = fl.add_parser("backup-add", help="copy mail of the sources to DESTINATION's FOLDER")
    ba.add_argument("--source", action="append", required=True,
                    help="an address, dept:PATH or all (repeat for more)")
    ba.add_argument("--direction", choices=DIRECTIONS, default="both")
    ba.add_argument("--keywords", help="all must be in subject or body, separated by ';'")
    ba.add_argument("destination")
    ba.add_argument("folder")
    bl = fl.add_parser("backup-list", help="id, sources, direction, keywords, destination, "
                       "folder")
    br = fl.add_parser("backup-remove", help="remove a backup rule by its id")
    br.add_argument("id", type=int)
    for p in (cl, ba, bl, br):
        p.add_argument("--enterprise", help="the enterprise (needed when there are several)")
    for name in ("catchall", "catchall-list", "backup-add", "backup-list", "backup-remove"):
        command("filter", name)(_run)

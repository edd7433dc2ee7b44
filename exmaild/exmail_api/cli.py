"""exmailctl exmail-api secret create|revoke --enterprise NAME --purpose P."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from exmaild.exmail_api.secrets import PURPOSES, create_secret, revoke_secret


async def secret(store: Any, a: argparse.Namespace) -> int:
    from exmaild.cli import _actor, _svc

    if a.action == "create":
        corp, sec = await create_secret(_svc(store), _actor(), a.enterprise, a.purpose)
        # The one line scripts rely on (docs/exmail-api.md).
        sys.stdout.write(f"corpid={corp} secret={sec}\n")
    else:
        await revoke_secret(_svc(store), _actor(), a.enterprise, a.purpose)
        sys.stdout.write(f"{a.purpose} secret revoked\n")
    return 0


def add_parsers(sub: Any, command: Callable[[str, str], Callable[[Any], Any]]) -> None:
    ex = sub.add_parser("exmail-api", help="Exmail's open API under /cgi-bin/")
    ex = ex.add_subparsers(dest="cmd", required=True)
    sc = ex.add_parser("secret", help="per-purpose secrets for gettoken")
    sc = sc.add_subparsers(dest="action", required=True)
    for verb, helptext in (("create", "prints one line: corpid=<id> secret=<secret> "
                                      "(replaces the purpose's previous secret)"),
                           ("revoke", "ends the secret and its access tokens")):
        p = sc.add_parser(verb, help=helptext)
        p.add_argument("--enterprise", help="the enterprise (needed when there are several)")
        p.add_argument("--purpose", required=True, choices=PURPOSES)
    command("exmail-api", "secret")(secret)

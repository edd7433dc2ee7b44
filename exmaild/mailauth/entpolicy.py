"""Per-enterprise mail-authentication policy: an enterprise may override the
`[mailauth]` actions in its settings (`exmailctl enterprise settings
--dmarc-reject-action junk`, the admin API's enterprise settings); null is the
server's. The recipient's enterprise decides (inbound.InboundChecks.finish)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m

# setting -> the values it may take (the same as the [mailauth] key's).
ACTIONS: dict[str, tuple[str, ...]] = {
    "dmarc_reject_action": ("reject", "junk"),
    "dmarc_quarantine_action": ("junk", "inbox"),
    "spf_fail_action": ("junk", "reject", "inbox"),
    "impersonation_action": ("junk", "mark"),
}


@dataclass(frozen=True)
class Policy:
    dmarc_reject_action: str
    dmarc_quarantine_action: str
    spf_fail_action: str
    impersonation_action: str

    @classmethod
    def of(cls, cfg: Any, overrides: dict[str, Any] | None = None) -> Policy:
        o = overrides or {}
        return cls(**{k: o.get(k) or getattr(cfg, k) for k in ACTIONS})


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    for key, values in ACTIONS.items():
        parser.add_argument("--" + key.replace("_", "-"), choices=(*values, "default"),
                            help=f"{key} for mail to this enterprise (default: [mailauth]'s)")


def cli_changes(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ACTIONS:
        value = getattr(a, key, None)
        if value is not None:
            out[key] = None if value == "default" else value
    return out


async def recipient_policies(app: Any, account_ids: list[int]) -> dict[int, Policy]:
    """The policy of each recipient account, from its domain's enterprise."""
    from exmaild.directory.settings import enterprise_settings

    cfg = app.cfg.mailauth
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    A, D = m.accounts.c, m.domains.c

    def thd(conn: sa.Connection) -> dict[int, Policy]:
        rows = conn.execute(sa.select(A.id, D.enterprise_id).join(
            m.domains, D.id == A.domain_id).where(A.id.in_(ids))).all()
        per_ent: dict[int | None, Policy] = {None: Policy.of(cfg)}
        out = {}
        for aid, ent in rows:
            if ent not in per_ent:
                per_ent[ent] = Policy.of(cfg, enterprise_settings(conn, ent))
            out[aid] = per_ent[ent]
        return out

    return dict(await app.store.pool.do(thd))

"""Default mailbox quotas by role (manual §5.3.11, §4.4.2.1).

A new member gets the quota of its role unless one is given: normal members
[directory] member_quota_bytes (1 GiB), VIPs [directory] vip_quota_bytes
(0: unlimited); a new business mailbox gets [directory] shared_quota_bytes.
An enterprise may set its own of each in its settings (`member_quota_bytes`,
`vip_quota_bytes`, `shared_quota_bytes`; null: the server's). A quota set by
hand is an override: it is kept when the member changes role, whereas one
that still equals the old role's default follows the member to the new one.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.errors import Invalid
from exmaild.directory.settings import enterprise_settings

QUOTA_SETTINGS = ("member_quota_bytes", "vip_quota_bytes", "shared_quota_bytes")
MAX_QUOTA = 2**62


def check_quota_setting(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_QUOTA:
        raise Invalid(f"{key} is a whole number of bytes (0: unlimited) or null")


def default_quota(conn: sa.Connection, cfg: Any, enterprise_id: int, *, kind: str = "member",
                  vip: bool = False) -> int:
    """The quota a new account of this kind and role gets in this enterprise."""
    key = "shared_quota_bytes" if kind == "shared" else (
        "vip_quota_bytes" if vip else "member_quota_bytes")
    own = enterprise_settings(conn, enterprise_id).get(key)
    return int(own) if own is not None else int(getattr(cfg, key))


def quota_after_role_change(conn: sa.Connection, cfg: Any, enterprise_id: int, *,
                            quota: int, was_vip: bool, vip: bool) -> int | None:
    """The new quota when a member becomes (or stops being) a VIP, or None to
    keep the one it has (set by hand)."""
    if was_vip == vip:
        return None
    if quota != default_quota(conn, cfg, enterprise_id, vip=was_vip):
        return None
    return default_quota(conn, cfg, enterprise_id, vip=vip)

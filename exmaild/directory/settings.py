"""Enterprise settings (enterprises.settings JSON): what members may change
and how their mail presents them. Unset keys take the defaults here."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.errors import Invalid
from exmaild.mailauth.entpolicy import ACTIONS as _ACTIONS
from exmaild.store import model as m

# Manual §4.4.1.3: the From: display name of mail members send.
DISPLAY_NAME_POLICIES = ("name", "nickname", "name(nickname)", "nickname(name)")
WELCOME_MODES = ("default", "template", "off")  # manual §4.4.1.6

DEFAULTS: dict[str, Any] = {
    "display_name": "name",
    "members_may_change_nickname": True,
    # Off unless the enterprise turns it on: scripts that make accounts and
    # expect an empty INBOX (and every existing installation) stay as they were.
    "welcome": "off",
    "welcome_template": "",
    # Default quotas of new accounts (directory/quotas.py); None: the server's.
    "member_quota_bytes": None,
    "vip_quota_bytes": None,
    "shared_quota_bytes": None,
    # Manual §4.4.2.4: may members' rules forward (Sieve redirect) to
    # addresses outside the enterprise's domains (exmaild/sieve/delivery.py).
    "forward_outside": True,
    # Manual §4.4.2.2: each new department gets its own mail group (directory/
    # dept_autogroup.py). Off unless turned on: an upgrade adds no addresses.
    "department_groups": False,
    # Mail-authentication actions for mail to the enterprise's members
    # (exmaild/mailauth/entpolicy.py); None: the server's [mailauth] value.
    "dmarc_reject_action": None,
    "dmarc_quarantine_action": None,
    "spf_fail_action": None,
    "impersonation_action": None,
}
_TEMPLATE_MAX = 20000


def enterprise_settings(conn: sa.Connection, enterprise_id: int) -> dict[str, Any]:
    raw = conn.execute(sa.select(m.enterprises.c.settings).where(
        m.enterprises.c.id == enterprise_id)).scalar()
    return {**DEFAULTS, **{k: v for k, v in (raw or {}).items() if k in DEFAULTS}}


def check_settings(changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if key not in DEFAULTS:
            raise Invalid(f"unknown enterprise setting {key}")
        if key == "display_name" and value not in DISPLAY_NAME_POLICIES:
            raise Invalid(f"display_name is one of {', '.join(DISPLAY_NAME_POLICIES)}")
        if key == "forward_outside" and not isinstance(value, bool):
            raise Invalid("forward_outside is true or false")
        if key == "department_groups" and not isinstance(value, bool):
            raise Invalid("department_groups is true or false")
        if key == "members_may_change_nickname" and not isinstance(value, bool):
            raise Invalid("members_may_change_nickname is true or false")
        if key == "welcome" and value not in WELCOME_MODES:
            raise Invalid(f"welcome is one of {', '.join(WELCOME_MODES)}")
        if key in _ACTIONS and value is not None and value not in _ACTIONS[key]:
            raise Invalid(f"{key} is one of {', '.join(_ACTIONS[key])} or null")
        if key.endswith("_quota_bytes"):
            from exmaild.directory.quotas import check_quota_setting

            check_quota_setting(key, value)
        if key == "welcome_template":
            if not isinstance(value, str) or len(value) > _TEMPLATE_MAX:
                raise Invalid(f"welcome_template is text of at most {_TEMPLATE_MAX} characters")
    return changes


def display_name(policy: str, name: str, nickname: str) -> str:
    """The From: display name a policy gives; falls back to whichever is set."""
    if policy == "nickname":
        return nickname or name
    if policy == "name(nickname)" and name and nickname:
        return f"{name}({nickname})"
    if policy == "nickname(name)" and name and nickname:
        return f"{nickname}({name})"
    if policy.startswith("nickname"):
        return nickname or name
    return name or nickname


async def sender_display_name(pool: Any, account_id: int) -> str:
    """The From: display name the enterprise's policy gives a member's mail
    ("" when the member has neither name nor nickname, or no enterprise)."""
    A, D = m.accounts.c, m.domains.c

    def thd(conn: sa.Connection) -> str:
        row = conn.execute(sa.select(A.display_name, A.nickname, D.enterprise_id).join(
            m.domains, D.id == A.domain_id).where(A.id == account_id)).first()
        if row is None or row.enterprise_id is None:
            return ""
        policy = enterprise_settings(conn, row.enterprise_id)["display_name"]
        return display_name(policy, row.display_name or "", row.nickname or "")

    return await pool.do(thd)

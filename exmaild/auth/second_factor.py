"""TOTP as the second factor of the HTTP API logins: enrolment, the check at
login (one conditional UPDATE, so a code is accepted once even when two
nodes see it at the same time), recovery codes, and the audit of each."""

from __future__ import annotations

import hmac
from typing import Any

import sqlalchemy as sa

from exmaild.auth import totp
from exmaild.store import model as m

T = m.totp_secrets.c


def _audit(conn: sa.Connection, account_id: int, action: str, actor: str | None = None,
           ip: str = "", now: int = 0) -> None:
    row = conn.execute(sa.select(m.accounts.c.address, m.domains.c.enterprise_id).join(
        m.domains).where(m.accounts.c.id == account_id)).first()
    if row is None:
        return
    conn.execute(m.operation_log.insert().values(
        enterprise_id=row.enterprise_id, actor=(actor or row.address)[:320], action=action,
        target=row.address, ip=ip[:64], created=now))


def status(conn: sa.Connection, account_id: int) -> dict[str, Any]:
    r = conn.execute(sa.select(m.totp_secrets).where(T.account_id == account_id)).first()
    enabled = bool(r is not None and r.enabled)
    return {"enabled": enabled, "recovery_left": len(r.recovery) if enabled else 0}


def enabled(conn: sa.Connection, account_id: int) -> bool:
    return bool(conn.execute(sa.select(T.enabled).where(T.account_id == account_id)).scalar())


def begin(conn: sa.Connection, account_id: int, address: str, issuer: str,
          now: int) -> dict[str, Any] | None:
    """A new, not yet enabled secret; None when one is enabled already."""
    if enabled(conn, account_id):
        return None
    secret = totp.new_secret()
    conn.execute(m.totp_secrets.delete().where(T.account_id == account_id))
    conn.execute(m.totp_secrets.insert().values(account_id=account_id, secret=secret,
                                                enabled=False, recovery=[], created=now))
    return {"secret": secret, "uri": totp.uri(secret, address, issuer)}


def confirm(conn: sa.Connection, account_id: int, code: str, now: int,
            ip: str = "") -> list[str] | None:
    """Enable with a first right code: the recovery codes (shown once), or None."""
    r = conn.execute(sa.select(m.totp_secrets).where(T.account_id == account_id)).first()
    if r is None or r.enabled:
        return None
    step = totp.matching_step(r.secret, code, now, r.last_step)
    if step is None:
        return None
    codes = totp.recovery_codes()
    conn.execute(m.totp_secrets.update().where(T.account_id == account_id).values(
        enabled=True, last_step=step, recovery=[totp.digest(c) for c in codes]))
    _audit(conn, account_id, "totp.enable", ip=ip, now=now)
    return codes


def consume(conn: sa.Connection, account_id: int, code: str, now: int,
            ip: str = "") -> str | None:
    """"totp" or "recovery" when `code` is a valid second factor (and uses it
    up), else None."""
    r = conn.execute(sa.select(m.totp_secrets).where(
        T.account_id == account_id, T.enabled.is_(True))).first()
    if r is None or not code:
        return None
    step = totp.matching_step(r.secret, code, now, r.last_step)
    if step is not None:
        done = conn.execute(m.totp_secrets.update().where(
            T.account_id == account_id, T.last_step < step).values(last_step=step)).rowcount
        return "totp" if done else None
    d = totp.digest(code)
    left = [x for x in r.recovery if not hmac.compare_digest(x, d)]
    if len(left) == len(r.recovery):
        return None
    conn.execute(m.totp_secrets.update().where(T.account_id == account_id)
                 .values(recovery=left))
    _audit(conn, account_id, "totp.recovery", ip=ip, now=now)
    return "recovery"


def disable(conn: sa.Connection, account_id: int, now: int, *, actor: str | None = None,
            ip: str = "") -> bool:
    gone = conn.execute(m.totp_secrets.delete().where(T.account_id == account_id)).rowcount
    if gone:
        _audit(conn, account_id, "totp.disable", actor=actor, ip=ip, now=now)
    return bool(gone)

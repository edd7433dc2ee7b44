"""Domains, accounts and aliases: who exists and where their mail goes."""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.mailboxes import allocate_uidvalidity
from exmaild.store.pool import DBThreadPool
from exmaild.store.records import SYSTEM_FOLDERS, Account, Domain

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$"
)
_LOCAL_RE = re.compile(r"^[a-z0-9!#$&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$&'*+/=?^_`{|}~-]+)*$")


class DirectoryError(Exception):
    """A request the directory refuses; the message is for the administrator."""


def normalise_domain(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise DirectoryError(f"malformed domain name {name!r}") from e
    if not _DOMAIN_RE.match(name):
        raise DirectoryError(f"malformed domain name {name!r}")
    return name


def normalise_address(address: str) -> tuple[str, str]:
    """Lower-cased (local, domain) of a mailbox address, or DirectoryError."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or len(local) > 64 or not _LOCAL_RE.match(local.lower()):
        raise DirectoryError(f"malformed address {address!r}")
    return local.lower(), normalise_domain(domain)


def _now() -> int:
    return int(time.time())


def account_from_row(r: Any) -> Account:
    return Account(
        id=r.id,
        address=r.address,
        domain_id=r.domain_id,
        kind=r.kind,
        display_name=r.display_name,
        vip=bool(r.vip),
        enabled=bool(r.enabled),
        quota_bytes=r.quota_bytes,
        used_bytes=r.used_bytes,
        message_count=r.message_count,
        settings=dict(r.settings or {}),
        password_hash=r.password_hash,
        must_change_password=bool(getattr(r, "must_change_password", False)),
    )


class Directory:
    def __init__(self, pool: DBThreadPool) -> None:
        self.pool = pool

    # -- domains ---------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        name = normalise_domain(name)

        def thd(conn: sa.Connection) -> Domain:
            if conn.execute(sa.select(m.domains.c.id).where(m.domains.c.name == name)).first():
                raise DirectoryError(f"domain {name} already exists")
            ent = conn.execute(sa.select(m.enterprises.c.id).limit(1)).scalar()
            if ent is None:
                ent = conn.execute(
                    m.enterprises.insert().values(name="default", created=_now())
                ).inserted_primary_key[0]
            now = _now()
            did = conn.execute(
                m.domains.insert().values(enterprise_id=ent, name=name, created=now)
            ).inserted_primary_key[0]
            return Domain(did, name, now)

        return await self.pool.transaction(thd)

    async def list_domains(self) -> list[Domain]:
        def thd(conn: sa.Connection) -> list[Domain]:
            rows = conn.execute(sa.select(m.domains).order_by(m.domains.c.name))
            return [Domain(r.id, r.name, r.created) for r in rows]

        return await self.pool.do(thd)

    async def get_domain(self, name: str) -> Domain | None:
        name = name.rstrip(".").lower()

        def thd(conn: sa.Connection) -> Domain | None:
            r = conn.execute(sa.select(m.domains).where(m.domains.c.name == name)).first()
            return Domain(r.id, r.name, r.created) if r else None

        return await self.pool.do(thd)

    async def remove_domain(self, name: str, *, with_accounts: bool = False) -> int:
        """Remove a domain; refuses one that has accounts unless `with_accounts`.

        Returns the number of accounts removed (their mail is released).
        """
        name = normalise_domain(name)

        def thd(conn: sa.Connection) -> int:
            did = conn.execute(sa.select(m.domains.c.id).where(m.domains.c.name == name)).scalar()
            if did is None:
                raise DirectoryError(f"unknown domain {name}")
            ids = conn.execute(
                sa.select(m.accounts.c.id).where(m.accounts.c.domain_id == did)
            ).scalars().all()
            if ids and not with_accounts:
                raise DirectoryError(
                    f"domain {name} still has {len(ids)} account(s); "
                    "remove them first or confirm removing them with the domain"
                )
            for aid in ids:
                _delete_account(conn, aid)
            conn.execute(m.domains.delete().where(m.domains.c.id == did))
            return len(ids)

        return await self.pool.transaction(thd)

    # -- accounts --------------------------------------------------------
    async def add_account(
        self,
        address: str,
        password_hash: str | None,
        *,
        vip: bool = False,
        display_name: str = "",
        quota_bytes: int = 0,
        kind: str = "member",
    ) -> Account:
        local, domain = normalise_address(address)
        address = f"{local}@{domain}"

        def thd(conn: sa.Connection) -> Account:
            did = conn.execute(
                sa.select(m.domains.c.id).where(m.domains.c.name == domain)
            ).scalar()
            if did is None:
                raise DirectoryError(f"unknown domain {domain}: add it with `domain add` first")
            taken = conn.execute(
                sa.select(m.accounts.c.id).where(m.accounts.c.address == address)
            ).first() or conn.execute(
                sa.select(m.aliases.c.id).where(m.aliases.c.address == address)
            ).first()
            if taken:
                raise DirectoryError(f"address {address} is already in use")
            aid = insert_account(
                conn, did, address, password_hash, kind=kind, display_name=display_name,
                vip=vip, quota_bytes=quota_bytes,
            )
            return _account(conn, m.accounts.c.id == aid)

        return await self.pool.transaction(thd)

    async def get_account(self, address: str) -> Account | None:
        """The account an address reaches, directly or through an alias."""
        address = address.strip().lower()
        if address.endswith("."):
            address = address.rstrip(".")

        live = m.accounts.c.deleted_at.is_(None)  # the recycle bin reaches nobody

        def thd(conn: sa.Connection) -> Account | None:
            acct = _account(conn, sa.and_(m.accounts.c.address == address, live))
            if acct is None:
                aid = conn.execute(
                    sa.select(m.aliases.c.account_id).where(m.aliases.c.address == address)
                ).scalar()
                if aid is not None:
                    acct = _account(conn, sa.and_(m.accounts.c.id == aid, live))
            return acct

        return await self.pool.do(thd)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        return await self.pool.do(lambda conn: _account(conn, m.accounts.c.id == account_id))

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        def thd(conn: sa.Connection) -> list[Account]:
            q = sa.select(m.accounts).order_by(m.accounts.c.address)
            if domain:
                q = q.join(m.domains).where(m.domains.c.name == domain.lower())
            return [account_from_row(r) for r in conn.execute(q)]

        return await self.pool.do(thd)

    async def set_password(self, address: str, password_hash: str) -> None:
        await self._update(address, password_hash=password_hash)

    async def replace_password_hash(self, account_id: int, old: str, new: str) -> bool:
        """Store a rehash of the same password, unless the hash changed
        meanwhile (a password change wins); whether it was stored."""
        def thd(conn: sa.Connection) -> bool:
            res = conn.execute(m.accounts.update().where(
                m.accounts.c.id == account_id, m.accounts.c.password_hash == old,
            ).values(password_hash=new))
            return res.rowcount == 1

        return await self.pool.transaction(thd)

    async def update_settings(self, address: str, **settings: Any) -> Account:
        def thd(conn: sa.Connection) -> Account:
            acct = _account(conn, m.accounts.c.address == address.lower())
            if acct is None:
                raise DirectoryError(f"unknown account {address}")
            merged = {**acct.settings, **settings}
            conn.execute(
                m.accounts.update().where(m.accounts.c.id == acct.id).values(settings=merged)
            )
            return _account(conn, m.accounts.c.id == acct.id)

        return await self.pool.transaction(thd)

    async def set_quota(self, address: str, quota_bytes: int) -> None:
        await self._update(address, quota_bytes=quota_bytes)

    async def set_enabled(self, address: str, enabled: bool) -> None:
        await self._update(address, enabled=enabled)

    async def _update(self, address: str, **values: Any) -> None:
        def thd(conn: sa.Connection) -> None:
            res = conn.execute(
                m.accounts.update().where(m.accounts.c.address == address.lower()).values(**values)
            )
            if res.rowcount == 0:
                raise DirectoryError(f"unknown account {address}")

        await self.pool.transaction(thd)

    async def remove_account(self, address: str) -> None:
        def thd(conn: sa.Connection) -> None:
            aid = conn.execute(
                sa.select(m.accounts.c.id).where(m.accounts.c.address == address.lower())
            ).scalar()
            if aid is None:
                raise DirectoryError(f"unknown account {address}")
            _delete_account(conn, aid)

        await self.pool.transaction(thd)

    # -- aliases ---------------------------------------------------------
    async def add_alias(self, alias: str, target: str) -> None:
        local, domain = normalise_address(alias)
        alias = f"{local}@{domain}"

        def thd(conn: sa.Connection) -> None:
            q = sa.select(m.domains.c.id).where(m.domains.c.name == domain)
            if not conn.execute(q).first():
                raise DirectoryError(f"unknown domain {domain}")
            aid = conn.execute(
                sa.select(m.accounts.c.id).where(m.accounts.c.address == target.lower())
            ).scalar()
            if aid is None:
                raise DirectoryError(f"unknown account {target}")
            if conn.execute(
                sa.select(m.accounts.c.id).where(m.accounts.c.address == alias)
            ).first() or conn.execute(
                sa.select(m.aliases.c.id).where(m.aliases.c.address == alias)
            ).first():
                raise DirectoryError(f"address {alias} is already in use")
            conn.execute(m.aliases.insert().values(address=alias, account_id=aid))

        await self.pool.transaction(thd)

    async def addresses_of(self, account_id: int) -> list[str]:
        """Every address the account owns: its own and its aliases."""

        def thd(conn: sa.Connection) -> list[str]:
            own = conn.execute(
                sa.select(m.accounts.c.address).where(m.accounts.c.id == account_id)
            ).scalar()
            aliases = conn.execute(
                sa.select(m.aliases.c.address).where(m.aliases.c.account_id == account_id)
            ).scalars().all()
            return ([own] if own else []) + sorted(aliases)

        return await self.pool.do(thd)


def insert_account(
    conn: sa.Connection, domain_id: int, address: str, password_hash: str | None, **values: Any
) -> int:
    """A new account row with its system folders; the caller checked the address is free."""
    values.setdefault("settings", {})
    aid = conn.execute(
        m.accounts.insert().values(
            domain_id=domain_id, address=address, password_hash=password_hash,
            created=_now(), **values,
        )
    ).inserted_primary_key[0]
    uidvalidity = allocate_uidvalidity(conn, aid, len(SYSTEM_FOLDERS))
    conn.execute(
        m.mailboxes.insert(),
        [
            {"account_id": aid, "name": name, "special_use": use, "uidvalidity": uidvalidity + i}
            for i, (name, use) in enumerate(SYSTEM_FOLDERS)
        ],
    )
    # The system folders start subscribed; CREATE subscribes nothing.
    conn.execute(
        m.subscriptions.insert(),
        [{"account_id": aid, "name": name} for name, _ in SYSTEM_FOLDERS],
    )
    return aid


def _account(conn: sa.Connection, where: Any) -> Account | None:
    r = conn.execute(sa.select(m.accounts).where(where)).first()
    return account_from_row(r) if r else None


def _delete_account(conn: sa.Connection, account_id: int) -> None:
    from exmaild.store.contents import release_messages

    mids = conn.execute(
        sa.select(m.mailboxes.c.id).where(m.mailboxes.c.account_id == account_id)
    ).scalars().all()
    if mids:
        ids = conn.execute(
            sa.select(m.messages.c.id).where(m.messages.c.mailbox_id.in_(mids))
        ).scalars().all()
        release_messages(conn, ids)
        conn.execute(m.mailboxes.delete().where(m.mailboxes.c.id.in_(mids)))
    conn.execute(m.aliases.delete().where(m.aliases.c.account_id == account_id))
    conn.execute(m.accounts.delete().where(m.accounts.c.id == account_id))

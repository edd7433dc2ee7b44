"""Who writes which blob segment: the `segments` row as the record of ownership.

A process claims a segment's row (owner, lease_until, sealed=false) before it
creates the file, renews the lease while it writes, and seals the row when it
rolls to a new segment, closes cleanly, or a write or sync fails. Compaction,
in any process on any node, only touches sealed segments, and seals one whose
lease ran out (its writer died) first. Rows, not files or process variables,
decide: the file listing is taken before the rows are read, so the row of any
file listed is seen.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.pool import DBThreadPool

_s = m.segments.c


class SegmentLeases:
    """The database side of segment ownership; blocking (worker threads, CLI)."""

    def __init__(self, pool: DBThreadPool) -> None:
        self.pool = pool

    def claim(self, name: str, owner: str, until: int) -> bool:
        """Record a new segment as ours; False if the name is taken."""

        def thd(conn: sa.Connection) -> bool:
            if conn.execute(sa.select(_s.name).where(_s.name == name)).first() is not None:
                return False
            conn.execute(
                m.segments.insert().values(
                    name=name, size=0, dead_bytes=0, owner=owner, lease_until=until, sealed=False
                )
            )
            return True

        try:
            return self.pool.transaction_sync(thd)
        except sa.exc.IntegrityError:
            return False

    def renew(self, name: str, owner: str, until: int) -> bool:
        """Extend our hold; False if it is no longer ours (sealed by another)."""
        return bool(
            self.pool.transaction_sync(
                lambda conn: conn.execute(
                    m.segments.update()
                    .where(_s.name == name, _s.owner == owner, _s.sealed == sa.false())
                    .values(lease_until=until)
                ).rowcount
            )
        )

    def seal(self, name: str) -> None:
        self.pool.transaction_sync(
            lambda conn: conn.execute(
                m.segments.update().where(_s.name == name).values(sealed=True, lease_until=0)
            )
        )

    def forget(self, name: str) -> None:
        """Drop the row of a segment that was never written to."""
        self.pool.transaction_sync(
            lambda conn: conn.execute(
                m.segments.delete().where(_s.name == name, _s.size == 0)
            )
        )

    # -- compaction's side -------------------------------------------------
    def states(self) -> dict[str, tuple[bool, int]]:
        """(sealed, lease_until) per segment row."""
        rows = self.pool.do_sync(
            lambda conn: conn.execute(sa.select(_s.name, _s.sealed, _s.lease_until)).all()
        )
        return {r.name: (bool(r.sealed), int(r.lease_until)) for r in rows}

    def seal_expired(self, name: str, now: float | None = None) -> bool:
        """Seal a segment whose writer's lease ran out; False if it is held."""
        cutoff = int(time.time() if now is None else now)
        return bool(
            self.pool.transaction_sync(
                lambda conn: conn.execute(
                    m.segments.update()
                    .where(_s.name == name, _s.sealed == sa.false(), _s.lease_until < cutoff)
                    .values(sealed=True)
                ).rowcount
            )
        )

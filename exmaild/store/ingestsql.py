"""The ingest transaction's statements, run on the driver's own cursor.

Ingest is the hottest write path (every SMTP message, every APPEND). Through
SQLAlchemy Core each of its ten statements cost ~0.14 ms of CPU here, against
~15 µs for the same SQL on the DBAPI cursor, and that CPU is taken under the
GIL from the reactor thread. So these few statements are plain SQL written
once for SQLite and PostgreSQL (which both take `INSERT … ON CONFLICT` and
`RETURNING`), executed on the connection of the caller's SQLAlchemy
transaction, i.e. inside that transaction. The column names are those of
`store/model.py`; tests/test_store.py runs them on both databases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from exmaild.store import dbblobs

_CONTENT_COLUMNS = (
    "digest", "segment", '"offset"', "size", "refcount", "header_len", "envelope",
    "bodystructure", "body", "sent_date", "subject", "from_addr", "to_addr", "cc_addr",
    "bcc_addr", "message_id", "headers_text", "attachment_names", "excerpt", "sent_day",
)
_MESSAGE_COLUMNS = (
    "mailbox_id", "uid", "content_id", "size", "flags", "keywords", "internal_date",
    "added", "modseq",
)


def _values(n: int) -> str:
    return ", ".join("?" * n)


# A digest another transaction inserted first (two batches in flight on
# PostgreSQL) is not an error: the row is there, this copy's bytes are dead.
INSERT_CONTENT = (
    f"INSERT INTO contents ({', '.join(_CONTENT_COLUMNS)}) "
    f"VALUES ({_values(len(_CONTENT_COLUMNS))}) ON CONFLICT (digest) DO NOTHING RETURNING id"
)
INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
    f"VALUES ({_values(len(_MESSAGE_COLUMNS))})"
)
INSERT_TEXT = (
    "INSERT INTO content_text (content_id, text) VALUES (?, ?) ON CONFLICT (content_id) DO NOTHING"
)
ADD_REFS = "UPDATE contents SET refcount = refcount + ? WHERE id = ?"
ADD_USAGE = (
    "UPDATE accounts SET used_bytes = used_bytes + ?, message_count = message_count + ? "
    "WHERE id = ?"
)
RESERVE_UIDS = (
    "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 "
    "WHERE id = ? RETURNING uidnext, highestmodseq"
)
ACCOUNT_SEGMENT = (
    "INSERT INTO segments (name, size, dead_bytes) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET size = segments.size + excluded.size, "
    "dead_bytes = segments.dead_bytes + excluded.dead_bytes"
)
_MAILBOX_BY = {
    by: f"SELECT id, uidvalidity FROM mailboxes WHERE account_id = ? AND {by} = ? LIMIT 1"
    for by in ("id", "special_use", "name")
}


class IngestCursor:
    """The statements above on one transaction's DBAPI connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self.postgresql = conn.dialect.name == "postgresql"
        self._cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _sql(self, sql: str) -> str:
        # psycopg's placeholder is %s; none of these statements holds a % or a
        # literal question mark.
        return sql.replace("?", "%s") if self.postgresql else sql

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        self._cur.execute(self._sql(sql), params)
        return self._cur

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(self._sql(sql), rows)

    def close(self) -> None:
        self._cur.close()

    def content_ids(self, digests: Sequence[str]) -> dict[str, int]:
        if not digests:
            return {}
        sql = f"SELECT digest, id FROM contents WHERE digest IN ({_values(len(digests))})"
        return {dg: cid for dg, cid in self._run(sql, digests).fetchall()}

    def insert_content(self, row: Sequence[Any]) -> int | None:
        """The new row's id, or None if the digest is already stored."""
        found = self._run(INSERT_CONTENT, row).fetchone()
        return None if found is None else found[0]

    def insert_texts(self, rows: Sequence[tuple[int, str]]) -> None:
        """Search text of contents that have none yet (the index follows by
        trigger on SQLite, by the GIN index on PostgreSQL)."""
        self._many(INSERT_TEXT, rows)

    def store_chunks(self, content_id: int, pieces: Sequence[Any]) -> None:
        """A new content's bytes into the database (store/dbblobs.py)."""
        dbblobs.write_chunks(self._cur, self._sql, content_id, pieces)

    def account_segment(self, name: str, size: int, dead: int) -> None:
        self._run(ACCOUNT_SEGMENT, (name, size, dead))

    def usage(self, account_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        ids = sorted(account_ids)
        if not ids:
            return {}
        sql = f"SELECT id, used_bytes, quota_bytes FROM accounts WHERE id IN ({_values(len(ids))})"
        if self.postgresql:  # one quota check at a time per account
            sql += " ORDER BY id FOR UPDATE"
        return {aid: (used, quota) for aid, used, quota in self._run(sql, ids).fetchall()}

    def mailbox(self, account_id: int, by: str, key: str | int) -> tuple[int, int] | None:
        row = self._run(_MAILBOX_BY[by], (account_id, key)).fetchone()
        return None if row is None else (row[0], row[1])

    def reserve_uids(self, mailbox_id: int, n: int) -> tuple[int, int]:
        """(first UID, modseq) of `n` new entries in the mailbox."""
        uidnext, modseq = self._run(RESERVE_UIDS, (n, mailbox_id)).fetchone()
        return uidnext - n, modseq

    def insert_messages(self, rows: Sequence[Sequence[Any]]) -> None:
        self._many(INSERT_MESSAGE, rows)

    def add_refs(self, counts: dict[int, int]) -> None:
        self._many(ADD_REFS, [(n, cid) for cid, n in counts.items()])

    def add_usage(self, added: dict[int, list[int]]) -> None:
        self._many(ADD_USAGE, [(size, n, aid) for aid, (size, n) in sorted(added.items())])

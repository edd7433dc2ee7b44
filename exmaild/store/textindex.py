"""The substring index over ``content_text`` (SEARCH BODY/TEXT), per database.

``content_text`` (store/model.py) holds the decoded text of each content,
once per content however many mailboxes hold the message. The index beside
it is not in the model, because it is different on each database:

- SQLite: ``content_text_fts``, an FTS5 table with the trigram tokenizer
  (case-insensitive, any script, substrings of 3+ characters) over
  ``content_text`` as external content, so the text is stored once; triggers
  keep it in step with inserts and deletes of ``content_text`` rows.
- PostgreSQL: a ``pg_trgm`` GIN index on ``content_text.text``, which
  LIKE/ILIKE '%...%' use. Without the extension (not installed, no right to
  create it) there is no index: searches scan, and that is logged.

Migration 0005 creates these; ``ensure_index`` (``exmailctl search reindex``)
creates them again where they are missing, e.g. once pg_trgm is installed.
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

log = Logger()

FTS_TABLE = "content_text_fts"
PG_INDEX = "ix_content_text_trgm"
# Names of index objects the model does not describe (schema comparisons skip them).
_INDEX_PREFIXES = (FTS_TABLE, PG_INDEX)

SQLITE_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, content='content_text', content_rowid='content_id', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS content_text_ai AFTER INSERT ON content_text BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.content_id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS content_text_ad AFTER DELETE ON content_text BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) "
    "VALUES ('delete', old.content_id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS content_text_au AFTER UPDATE ON content_text BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) "
    "VALUES ('delete', old.content_id, old.text); "
    f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.content_id, new.text); END",
)
PG_DDL = f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON content_text USING gin (text gin_trgm_ops)"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: leave the index objects out of comparisons."""
    return not (name and name.startswith(_INDEX_PREFIXES))


def ensure_index(conn: sa.Connection) -> str:
    """Create the index where it is missing; what there is now, for a log line.

    Runs in the caller's transaction. On PostgreSQL a failed CREATE EXTENSION
    is rolled back to a savepoint, so the transaction goes on without the index.
    """
    if conn.dialect.name == "sqlite":
        try:
            with conn.begin_nested():
                for ddl in SQLITE_DDL:
                    conn.exec_driver_sql(ddl)
        except sa.exc.OperationalError as e:  # SQLite without FTS5 or trigram (< 3.34)
            log.warn("no full-text index for SEARCH BODY/TEXT (scans instead): {error}", error=e)
            return "none (FTS5 trigram unavailable: searches scan)"
        return "fts5 trigram"
    if conn.dialect.name != "postgresql":
        return "none"
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.exec_driver_sql(PG_DDL)
    except sa.exc.DBAPIError as e:
        log.warn(
            "pg_trgm is unavailable, so SEARCH BODY/TEXT scans the text: {error}",
            error=str(e).splitlines()[0],
        )
        return "none (pg_trgm unavailable: searches scan)"
    return "pg_trgm gin"


_HAS_FTS: weakref.WeakKeyDictionary[sa.Engine, bool] = weakref.WeakKeyDictionary()


def has_fts(conn: sa.Connection) -> bool:
    """Whether this SQLite database has the FTS5 table (looked up once per engine)."""
    found = _HAS_FTS.get(conn.engine)
    if found is None:
        found = _HAS_FTS[conn.engine] = (
            conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (FTS_TABLE,)
            ).first()
            is not None
        )
    return found


def forget(engine: sa.Engine) -> None:
    """Look again next time (after ``ensure_index`` created the table)."""
    _HAS_FTS.pop(engine, None)

"""Plain SQL on the driver's cursor, for the few statements IMAP runs per
command (index refresh, STORE, EXPUNGE, \\Recent): building and compiling a
SQLAlchemy statement costs more than the query itself there. Placeholders
are ``?``; on a driver with another paramstyle they become ``%s``. The
statements run on the caller's Connection, inside its transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa


def _sql(conn: sa.Connection, sql: str) -> str:
    return sql if conn.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def raw_rows(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The result rows as plain tuples."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(_sql(conn, sql), params)
        return cur.fetchall()
    finally:
        cur.close()


def raw_exec(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """Run one statement; how many rows it changed."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(_sql(conn, sql), params)
        return int(cur.rowcount)
    finally:
        cur.close()


def raw_many(conn: sa.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """One statement for each tuple of ``rows``."""
    if not rows:
        return
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.executemany(_sql(conn, sql), rows)
    finally:
        cur.close()

"""Schema version checks and upgrades through Alembic.

The revisions live in the repository's top-level `migrations/`, installed as
the package `exmaild.migrations` so a non-editable install can upgrade too.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory


class SchemaError(Exception):
    """The database schema is not the one this version of exmaild needs."""


def migrations_dir() -> Path:
    pkg_root = Path(__file__).resolve().parent.parent
    for candidate in (pkg_root / "migrations", pkg_root.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise SchemaError("the migrations directory is missing from this installation")


def _alembic_config(conn: sa.Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: sa.Engine) -> bool:
    return not sa.inspect(engine).get_table_names()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
        return
    with engine.connect() as conn:
        # A table rebuild (Alembic's batch mode) drops the old table; with
        # foreign keys on, that would cascade to the rows referring to it.
        # The pragma only takes effect outside a transaction.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            with conn.begin():
                command.upgrade(_alembic_config(conn), revision)
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def ensure_schema(engine: sa.Engine) -> str:
    """Create the schema in an empty database; refuse an out-of-date one.

    Returns what was done ("created" or "current") for the start-up log.
    """
    if is_empty(engine):
        upgrade(engine)
        return "created"
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaError(
            f"database schema is at revision {current or 'none'}, this exmaild needs {head}; "
            "run `exmailctl --config FILE db upgrade` first"
        )
    return "current"

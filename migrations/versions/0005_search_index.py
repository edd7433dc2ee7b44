"""search index: the whole decoded text per content, with a substring index

Revision ID: 0005
Revises: 0007
Create Date: 2026-12-02

Existing contents get no text row here (decoding every stored message inside
a migration would hold the upgrade for hours on a big store): their BODY/TEXT
searches keep using the excerpt until `exmailctl search reindex` has filled
the table in batches.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0007"
branch_labels = None
depends_on = None

FTS_TABLE = "content_text_fts"
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
PG_INDEX = "ix_content_text_trgm"
log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "content_text",
        sa.Column("content_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["content_id"],
            ["contents.id"],
            name=op.f("fk_content_text_content_id_contents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("content_id", name=op.f("pk_content_text")),
    )
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        try:
            with conn.begin_nested():
                for ddl in SQLITE_DDL:
                    conn.exec_driver_sql(ddl)
        except sa.exc.OperationalError as e:  # no FTS5 / trigram (SQLite < 3.34)
            log.warning("content_text: no FTS5 trigram index, searches will scan (%s)", e)
    elif conn.dialect.name == "postgresql":
        try:
            with conn.begin_nested():
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                conn.exec_driver_sql(
                    f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON content_text "
                    "USING gin (text gin_trgm_ops)"
                )
        except sa.exc.DBAPIError as e:
            log.warning("content_text: pg_trgm unavailable, searches will scan (%s)", e)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for name in ("content_text_ai", "content_text_ad", "content_text_au"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    op.drop_table("content_text")

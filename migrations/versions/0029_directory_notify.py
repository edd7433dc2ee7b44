"""PostgreSQL: announce directory changes on the channel exmaild_directory

Every directory change writes an operation_log row, so a statement-level
trigger on that table tells every listening node at commit time
(store/pgnotify.py); SQLite has no such channel and keeps polling.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-02
"""

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION exmaild_directory_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('exmaild_directory', '');
            RETURN NULL;
        END $$ LANGUAGE plpgsql
    """)
    op.execute("""
        CREATE TRIGGER operation_log_notify AFTER INSERT ON operation_log
        FOR EACH STATEMENT EXECUTE FUNCTION exmaild_directory_changed()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS operation_log_notify ON operation_log")
    op.execute("DROP FUNCTION IF EXISTS exmaild_directory_changed()")

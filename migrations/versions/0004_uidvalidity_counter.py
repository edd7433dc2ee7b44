"""per-account UIDVALIDITY counter; mailbox ids never reused

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("next_uidvalidity", sa.BigInteger(), server_default="0", nullable=False)
        )
    # Start above every value already handed out.
    op.execute(
        "UPDATE accounts SET next_uidvalidity = COALESCE("
        "(SELECT MAX(uidvalidity) + 1 FROM mailboxes WHERE mailboxes.account_id = accounts.id), 0)"
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # AUTOINCREMENT is part of SQLite's CREATE TABLE: rebuild the table.
        # schema.upgrade() turns foreign keys off around migrations, so the
        # rebuild's DROP TABLE does not cascade to the messages.
        if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
            if bind.exec_driver_sql("SELECT 1 FROM mailboxes LIMIT 1").first():
                raise RuntimeError("foreign keys must be off to rebuild the mailboxes table")
        with op.batch_alter_table(
            "mailboxes", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        bad = bind.exec_driver_sql("PRAGMA foreign_key_check").first()
        if bad is not None:
            raise RuntimeError(f"foreign key violation after rebuilding mailboxes: {tuple(bad)}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "mailboxes", recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("next_uidvalidity")

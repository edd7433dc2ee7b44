"""\\Recent across restarts; subscriptions apart from mailboxes

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "mailboxes",
        sa.Column("recent_uid", sa.BigInteger(), server_default="0", nullable=False),
    )
    # What is in a mailbox at the upgrade is not new to anyone.
    op.execute("UPDATE mailboxes SET recent_uid = uidnext - 1")
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_subscriptions_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_subscriptions_account_id_name")),
    )
    op.execute(
        "INSERT INTO subscriptions (account_id, name) "
        "SELECT account_id, name FROM mailboxes WHERE subscribed"
    )
    # A plain DROP COLUMN (SQLite >= 3.35): a batch copy of the table would
    # drop the old one, and foreign_keys=ON would cascade to the messages.
    op.drop_column("mailboxes", "subscribed")


def downgrade() -> None:
    op.add_column(
        "mailboxes",
        sa.Column("subscribed", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.execute(
        "UPDATE mailboxes SET subscribed = EXISTS (SELECT 1 FROM subscriptions s "
        "WHERE s.account_id = mailboxes.account_id AND s.name = mailboxes.name)"
    )
    op.drop_table("subscriptions")
    op.drop_column("mailboxes", "recent_uid")

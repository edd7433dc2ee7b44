"""queue_messages.trace: header fields sent before a queued copy (a Sieve
redirect's Delivered-To), and an index for vacation's "known senders"

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue_messages") as b:
        b.add_column(sa.Column("trace", sa.Text(), nullable=True))
    op.create_index(op.f("ix_mail_log_recipient_sender"), "mail_log", ["recipient", "sender"])


def downgrade() -> None:
    op.drop_index(op.f("ix_mail_log_recipient_sender"), table_name="mail_log")
    with op.batch_alter_table("queue_messages") as b:
        b.drop_column("trace")

"""The mail log: one row per recipient of every message in and out

Revision ID: 0019
Revises: 0020
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0020"
branch_labels = None
depends_on = None

_LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mail_log",
        sa.Column("id", _LOG_ID, nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=True),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("written_to", sa.String(length=320), server_default="", nullable=False),
        sa.Column("subject", sa.String(length=200), server_default="", nullable=False),
        sa.Column("size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("queue_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("client", sa.String(length=64), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_log")),
    )
    op.create_index(op.f("ix_mail_log_created"), "mail_log", ["created"])
    op.create_index(op.f("ix_mail_log_enterprise_id_created"), "mail_log",
                    ["enterprise_id", "created"])
    op.create_index(op.f("ix_mail_log_queue_id"), "mail_log", ["queue_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_mail_log_queue_id"), table_name="mail_log")
    op.drop_index(op.f("ix_mail_log_enterprise_id_created"), table_name="mail_log")
    op.drop_index(op.f("ix_mail_log_created"), table_name="mail_log")
    op.drop_table("mail_log")

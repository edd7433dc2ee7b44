"""outbound queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=False),
        sa.Column("content_id", sa.Integer(), nullable=True),
        sa.Column("body_offset", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("envid", sa.String(length=100), nullable=True),
        sa.Column("ret", sa.String(length=4), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["content_id"], ["contents.id"], name=op.f("fk_queue_messages_content_id_contents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_messages")),
        sa.UniqueConstraint("queue_id", name=op.f("uq_queue_messages_queue_id")),
    )
    op.create_table(
        "queue_recipients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("orcpt", sa.String(length=500), nullable=True),
        sa.Column("notify", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt", sa.BigInteger(), nullable=False),
        sa.Column("last_attempt", sa.BigInteger(), nullable=True),
        sa.Column("last_reply", sa.Text(), nullable=True),
        sa.Column("relay", sa.String(length=300), nullable=True),
        sa.Column("delay_notified", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["queue_messages.id"],
            name=op.f("fk_queue_recipients_message_id_queue_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_recipients")),
    )
    with op.batch_alter_table("queue_recipients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_queue_recipients_message_id"), ["message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_queue_recipients_status_next_attempt"),
            ["status", "next_attempt"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("queue_recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_queue_recipients_status_next_attempt"))
        batch_op.drop_index(batch_op.f("ix_queue_recipients_message_id"))

    op.drop_table("queue_recipients")
    op.drop_table("queue_messages")

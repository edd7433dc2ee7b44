"""sieve_scripts, vacation_replies, member_filters (the rule engine, issue 13)

Revision ID: 0013
Revises: 0014
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sieve_scripts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("script", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_table(
        "vacation_replies",
        sa.Column("account_id", sa.Integer(),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sender", sa.String(length=320), primary_key=True),
        sa.Column("handle", sa.String(length=64), primary_key=True),
        sa.Column("expires", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "member_filters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("list", sa.String(length=8), nullable=False),
        sa.Column("pattern", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=8), server_default="junk", nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("account_id", "list", "pattern"),
    )


def downgrade() -> None:
    op.drop_table("member_filters")
    op.drop_table("vacation_replies")
    op.drop_table("sieve_scripts")

"""Outbound TLS policy: the MTA-STS policy cache and TLS-RPT counts

Revision ID: 0025
Revises: 0023
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mta_sts_policies",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("policy_id", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("mx", sa.Text(), nullable=False),
        sa.Column("max_age", sa.BigInteger(), nullable=False),
        sa.Column("fetched", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_mta_sts_policies")),
    )
    op.create_table(
        "tls_report_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("policy_type", sa.String(length=16), nullable=False),
        sa.Column("mx_host", sa.String(length=253), server_default="", nullable=False),
        sa.Column("result", sa.String(length=40), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tls_report_counts")),
        sa.UniqueConstraint("day", "domain", "policy_type", "mx_host", "result",
                            name=op.f("uq_tls_report_counts_day_domain_policy_type_mx_host_result")),
    )


def downgrade() -> None:
    op.drop_table("tls_report_counts")
    op.drop_table("mta_sts_policies")

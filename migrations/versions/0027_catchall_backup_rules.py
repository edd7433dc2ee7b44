"""domain_catchall and backup_rules: an enterprise's catch-all mailbox per
domain (manual 4.4.4.3) and its mail backup rules (manual 4.4.6.1), issue 13

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domain_catchall",
        sa.Column("domain_id", sa.Integer(), sa.ForeignKey("domains.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("account_id", sa.Integer(),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "backup_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("enterprise_id", sa.Integer(),
                  sa.ForeignKey("enterprises.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("dest_account_id", sa.Integer(),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("folder", sa.String(length=1000), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_backup_rules_enterprise_id", "backup_rules", ["enterprise_id"])


def downgrade() -> None:
    op.drop_index("ix_backup_rules_enterprise_id", table_name="backup_rules")
    op.drop_table("backup_rules")
    op.drop_table("domain_catchall")

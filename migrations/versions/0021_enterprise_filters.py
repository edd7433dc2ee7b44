"""enterprise_filters: an enterprise's inbound black/white lists and subject
keyword filters (issue 13, manual 4.4.4)

Revision ID: 0021
Revises: 0013
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enterprise_filters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("enterprise_id", sa.Integer(),
                  sa.ForeignKey("enterprises.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("pattern", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=8), server_default="junk", nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("enterprise_id", "kind", "pattern"),
    )


def downgrade() -> None:
    op.drop_table("enterprise_filters")

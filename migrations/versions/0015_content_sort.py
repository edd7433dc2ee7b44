"""content_sort: SORT / THREAD keys per content (RFC 5256, RFC 5957)

Revision ID: 0015
Revises: 0009
Create Date: 2026-12-02

The table starts empty: a mailbox's rows are made the first time it is
sorted or threaded (exmaild/store/sortkeys.py), so the upgrade is instant.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_sort",
        sa.Column("content_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("base_subject", sa.Text(), nullable=False),
        sa.Column("is_reply", sa.Boolean(), nullable=False),
        sa.Column("from_key", sa.Text(), nullable=False),
        sa.Column("to_key", sa.Text(), nullable=False),
        sa.Column("cc_key", sa.Text(), nullable=False),
        sa.Column("display_from", sa.Text(), nullable=False),
        sa.Column("display_to", sa.Text(), nullable=False),
        sa.Column("msgid", sa.Text(), nullable=False),
        sa.Column("refs", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["content_id"], ["contents.id"],
            name=op.f("fk_content_sort_content_id_contents"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("content_id", name=op.f("pk_content_sort")),
    )


def downgrade() -> None:
    op.drop_table("content_sort")

"""Message contents in the database: blob_chunks ([blobs] backend = "postgresql")

A content whose `segment` is "@db" keeps its bytes here, in fixed-size
chunks, instead of in a segment file (store/dbblobs.py).

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_chunks",
        sa.Column("content_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.ForeignKeyConstraint(["content_id"], ["contents.id"], ondelete="CASCADE",
                                name=op.f("fk_blob_chunks_content_id_contents")),
        sa.PrimaryKeyConstraint("content_id", "seq", name=op.f("pk_blob_chunks")),
    )


def downgrade() -> None:
    op.drop_table("blob_chunks")

"""segment ownership: owner, lease and sealed flag per blob segment

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("lease_until", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("sealed", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Segments from before this revision were written by daemons that must be
    # stopped for the upgrade: none of them is being written any more.
    op.execute(sa.text("UPDATE segments SET sealed = :t").bindparams(t=True))


def downgrade() -> None:
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.drop_column("sealed")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("owner")

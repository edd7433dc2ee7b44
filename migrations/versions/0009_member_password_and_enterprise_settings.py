"""members: "must change password at next login"; enterprise settings

Revision ID: 0009
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as b:
        b.add_column(sa.Column("must_change_password", sa.Boolean(), server_default=sa.false(),
                               nullable=False))
    with op.batch_alter_table("enterprises", schema=None) as b:
        b.add_column(sa.Column("settings", sa.JSON(), nullable=True))
    with op.batch_alter_table("domains", schema=None) as b:
        b.add_column(sa.Column("verify_token", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("domains", schema=None) as b:
        b.drop_column("verify_token")
    with op.batch_alter_table("enterprises", schema=None) as b:
        b.drop_column("settings")
    with op.batch_alter_table("accounts", schema=None) as b:
        b.drop_column("must_change_password")

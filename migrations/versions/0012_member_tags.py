"""member tags, and tags as a mail-group source

Revision ID: 0012
Revises: 0018
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["enterprise_id"], ["enterprises.id"],
                                name=op.f("fk_tags_enterprise_id_enterprises")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("enterprise_id", "name", name=op.f("uq_tags_enterprise_id_name")),
    )
    op.create_table(
        "member_tags",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_member_tags_account_id_accounts"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tag_id"], ["tags.id"],
                                name=op.f("fk_member_tags_tag_id_tags"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id", "tag_id", name=op.f("pk_member_tags")),
    )
    with op.batch_alter_table("member_tags", schema=None) as b:
        b.create_index(b.f("ix_member_tags_tag_id"), ["tag_id"], unique=False)
    with op.batch_alter_table("group_members", schema=None) as b:
        b.add_column(sa.Column("tag_id", sa.Integer(), nullable=True))
        b.create_foreign_key(b.f("fk_group_members_tag_id_tags"), "tags", ["tag_id"], ["id"],
                             ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("group_members", schema=None) as b:
        b.drop_constraint(b.f("fk_group_members_tag_id_tags"), type_="foreignkey")
        b.drop_column("tag_id")
    with op.batch_alter_table("member_tags", schema=None) as b:
        b.drop_index(b.f("ix_member_tags_tag_id"))
    op.drop_table("member_tags")
    op.drop_table("tags")

"""enterprise directory: member profile, departments, admin roles, API tokens, operation log

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enterprises", schema=None) as b:
        b.add_column(sa.Column("member_limit", sa.Integer(), nullable=True))
        b.add_column(sa.Column("vip_seats", sa.Integer(), nullable=True))
    with op.batch_alter_table("domains", schema=None) as b:
        b.add_column(
            sa.Column("is_primary", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("departments", schema=None) as b:
        b.add_column(sa.Column("position", sa.Integer(), server_default="0", nullable=False))
        b.create_index(
            b.f("ix_departments_enterprise_id_parent_id"), ["enterprise_id", "parent_id"],
            unique=False,
        )
    with op.batch_alter_table("accounts", schema=None) as b:
        b.add_column(sa.Column("nickname", sa.String(length=200), server_default="",
                               nullable=False))
        b.add_column(sa.Column("phone", sa.String(length=40), server_default="", nullable=False))
        b.add_column(sa.Column("title", sa.String(length=200), server_default="", nullable=False))
        b.add_column(sa.Column("gender", sa.String(length=8), server_default="", nullable=False))
        b.add_column(sa.Column("external_id", sa.String(length=200), nullable=True))
        b.add_column(sa.Column("deleted_at", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("renamed", sa.Boolean(), server_default=sa.false(),
                               nullable=False))
        b.create_index(b.f("ix_accounts_domain_id"), ["domain_id"], unique=False)

    op.create_table(
        "account_departments",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"],
            name=op.f("fk_account_departments_account_id_accounts"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"],
            name=op.f("fk_account_departments_department_id_departments"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "department_id", name=op.f("pk_account_departments")),
    )
    with op.batch_alter_table("account_departments", schema=None) as b:
        b.create_index(b.f("ix_account_departments_department_id"), ["department_id"],
                       unique=False)

    op.create_table(
        "admin_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("functions", sa.JSON(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_admin_roles_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["enterprise_id"], ["enterprises.id"],
            name=op.f("fk_admin_roles_enterprise_id_enterprises"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_roles")),
        sa.UniqueConstraint("enterprise_id", "account_id",
                            name=op.f("uq_admin_roles_enterprise_id_account_id")),
    )
    op.create_table(
        "admin_role_departments",
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"],
            name=op.f("fk_admin_role_departments_department_id_departments"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"], ["admin_roles.id"],
            name=op.f("fk_admin_role_departments_role_id_admin_roles"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_id", "department_id", name=op.f("pk_admin_role_departments")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=True),
        sa.Column("revoked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_api_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["enterprise_id"], ["enterprises.id"],
            name=op.f("fk_api_tokens_enterprise_id_enterprises"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "mail_groups",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("allow", sa.String(length=16), server_default="anyone", nullable=False),
        sa.Column("allow_list", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_mail_groups_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_mail_groups")),
    )
    op.create_table(
        "group_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.Column("with_children", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_group_members_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"],
            name=op.f("fk_group_members_department_id_departments"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["accounts.id"], name=op.f("fk_group_members_group_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_members")),
    )
    with op.batch_alter_table("group_members", schema=None) as b:
        b.create_index(b.f("ix_group_members_group_id"), ["group_id"], unique=False)
        b.create_index(b.f("ix_group_members_account_id"), ["account_id"], unique=False)
    op.create_table(
        "operation_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=400), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operation_log")),
    )
    with op.batch_alter_table("operation_log", schema=None) as b:
        b.create_index(b.f("ix_operation_log_enterprise_id_id"), ["enterprise_id", "id"],
                       unique=False)


def downgrade() -> None:
    with op.batch_alter_table("operation_log", schema=None) as b:
        b.drop_index(b.f("ix_operation_log_enterprise_id_id"))
    op.drop_table("operation_log")
    with op.batch_alter_table("group_members", schema=None) as b:
        b.drop_index(b.f("ix_group_members_account_id"))
        b.drop_index(b.f("ix_group_members_group_id"))
    op.drop_table("group_members")
    op.drop_table("mail_groups")
    op.drop_table("api_tokens")
    op.drop_table("admin_role_departments")
    op.drop_table("admin_roles")
    with op.batch_alter_table("account_departments", schema=None) as b:
        b.drop_index(b.f("ix_account_departments_department_id"))
    op.drop_table("account_departments")
    with op.batch_alter_table("accounts", schema=None) as b:
        b.drop_index(b.f("ix_accounts_domain_id"))
        for col in ("renamed", "deleted_at", "external_id", "gender", "title", "phone", "nickname"):
            b.drop_column(col)
    with op.batch_alter_table("departments", schema=None) as b:
        b.drop_index(b.f("ix_departments_enterprise_id_parent_id"))
        b.drop_column("position")
    with op.batch_alter_table("domains", schema=None) as b:
        b.drop_column("is_primary")
    with op.batch_alter_table("enterprises", schema=None) as b:
        b.drop_column("vip_seats")
        b.drop_column("member_limit")

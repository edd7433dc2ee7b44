"""login security: app passwords, login log, throttling state, login policy, TOTP

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

_LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "app_passwords",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("last_used", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_app_passwords_account_id_accounts"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["accounts.id"],
                                name=op.f("fk_app_passwords_created_by_accounts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_passwords")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_app_passwords_account_id_name")),
    )
    op.create_table(
        "login_log",
        sa.Column("id", _LOG_ID, nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("account", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=120), nullable=False),
        sa.Column("client", sa.String(length=200), server_default="", nullable=False),
        sa.Column("result", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_log")),
    )
    op.create_index(op.f("ix_login_log_created"), "login_log", ["created"])
    op.create_index(op.f("ix_login_log_account_id_ip_result"), "login_log",
                    ["account_id", "ip", "result"])
    op.create_index(op.f("ix_login_log_enterprise_id_created"), "login_log",
                    ["enterprise_id", "created"])
    op.create_table(
        "auth_throttle",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_auth_throttle")),
    )
    op.create_table(
        "login_policy",
        sa.Column("enterprise_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["enterprise_id"], ["enterprises.id"],
                                name=op.f("fk_login_policy_enterprise_id_enterprises"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("enterprise_id", name=op.f("pk_login_policy")),
    )
    op.create_table(
        "totp_secrets",
        sa.Column("account_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("secret", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("recovery", sa.JSON(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_totp_secrets_account_id_accounts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_totp_secrets")),
    )


def downgrade() -> None:
    op.drop_table("totp_secrets")
    op.drop_table("login_policy")
    op.drop_table("auth_throttle")
    op.drop_index(op.f("ix_login_log_enterprise_id_created"), table_name="login_log")
    op.drop_index(op.f("ix_login_log_account_id_ip_result"), table_name="login_log")
    op.drop_index(op.f("ix_login_log_created"), table_name="login_log")
    op.drop_table("login_log")
    op.drop_table("app_passwords")

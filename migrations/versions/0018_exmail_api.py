"""Exmail's open API: corp ids, per-purpose secrets, access tokens, profile extras

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exmail_api_corps",
        sa.Column("enterprise_id", sa.Integer(), nullable=False),
        sa.Column("corp_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["enterprise_id"], ["enterprises.id"], ondelete="CASCADE",
                                name="fk_exmail_api_corps_enterprise_id_enterprises"),
        sa.PrimaryKeyConstraint("enterprise_id", name="pk_exmail_api_corps"),
        sa.UniqueConstraint("corp_id", name="uq_exmail_api_corps_corp_id"),
    )
    op.create_table(
        "exmail_api_secrets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enterprise_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["enterprise_id"], ["enterprises.id"], ondelete="CASCADE",
                                name="fk_exmail_api_secrets_enterprise_id_enterprises"),
        sa.PrimaryKeyConstraint("id", name="pk_exmail_api_secrets"),
        sa.UniqueConstraint("enterprise_id", "purpose",
                            name="uq_exmail_api_secrets_enterprise_id_purpose"),
    )
    op.create_table(
        "exmail_api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["secret_id"], ["exmail_api_secrets.id"], ondelete="CASCADE",
                                name="fk_exmail_api_tokens_secret_id_exmail_api_secrets"),
        sa.PrimaryKeyConstraint("id", name="pk_exmail_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_exmail_api_tokens_token_hash"),
    )
    op.create_index("ix_exmail_api_tokens_secret_id", "exmail_api_tokens", ["secret_id"])
    op.create_table(
        "exmail_api_profiles",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("tel", sa.String(length=40), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_exmail_api_profiles_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", name="pk_exmail_api_profiles"),
    )


def downgrade() -> None:
    op.drop_table("exmail_api_profiles")
    op.drop_index("ix_exmail_api_tokens_secret_id", table_name="exmail_api_tokens")
    op.drop_table("exmail_api_tokens")
    op.drop_table("exmail_api_secrets")
    op.drop_table("exmail_api_corps")

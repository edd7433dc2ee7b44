"""expunged_uids: expunged UID ranges with their modseq, for QRESYNC

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02

QRESYNC's VANISHED (EARLIER) names the UIDs expunged since a client's
modseq. Expunges before this upgrade were not recorded: each mailbox gets one
row 1:uidnext-1 at its current highest modseq, so a client older than that is
told every UID it knows of that is not there any more (readers subtract the
UIDs present).
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expunged_uids",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("first_uid", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_expunged_uids_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expunged_uids")),
    )
    op.create_index(
        op.f("ix_expunged_uids_mailbox_id_modseq"), "expunged_uids", ["mailbox_id", "modseq"]
    )
    op.execute(
        "INSERT INTO expunged_uids (mailbox_id, first_uid, last_uid, modseq) "
        "SELECT id, 1, uidnext - 1, highestmodseq FROM mailboxes WHERE uidnext > 1"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_expunged_uids_mailbox_id_modseq"), table_name="expunged_uids")
    op.drop_table("expunged_uids")

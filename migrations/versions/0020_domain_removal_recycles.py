"""accounts of a removed domain go to the recycle bin

Revision ID: 0020
Revises: 0021
Create Date: 2026-12-02

Removing a domain used to delete its accounts with their mail. Now they go to
the recycle bin: `accounts.domain_id` may be NULL for such an account, and
`orphan_enterprise_id` keeps the enterprise it belongs to until it is
restored (after the domain is added again) or purged.

Also `mail_groups.department_id`: a department's own group, whose members
follow the department (directory/dept_groups.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as b:
        b.alter_column("domain_id", existing_type=sa.Integer(), nullable=True)
        b.add_column(sa.Column("orphan_enterprise_id", sa.Integer(), nullable=True))
        b.create_foreign_key(
            b.f("fk_accounts_orphan_enterprise_id_enterprises"), "enterprises",
            ["orphan_enterprise_id"], ["id"],
        )
    with op.batch_alter_table("mail_groups", schema=None) as b:
        b.add_column(sa.Column("department_id", sa.Integer(), nullable=True))
        b.create_unique_constraint(b.f("uq_mail_groups_department_id"), ["department_id"])
        b.create_foreign_key(
            b.f("fk_mail_groups_department_id_departments"), "departments",
            ["department_id"], ["id"],
        )


def downgrade() -> None:
    # An account without a domain cannot go back to a NOT NULL domain_id, and
    # dropping it here would lose mail: the admin purges or restores it first.
    n = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM accounts WHERE domain_id IS NULL")).scalar()
    if n:
        raise RuntimeError(f"{n} recycled account(s) of removed domains: restore or purge "
                           "them (exmailctl recycle purge ADDRESS) before downgrading")
    with op.batch_alter_table("mail_groups", schema=None) as b:
        b.drop_constraint(b.f("fk_mail_groups_department_id_departments"), type_="foreignkey")
        b.drop_constraint(b.f("uq_mail_groups_department_id"), type_="unique")
        b.drop_column("department_id")
    with op.batch_alter_table("accounts", schema=None) as b:
        b.drop_constraint(b.f("fk_accounts_orphan_enterprise_id_enterprises"),
                          type_="foreignkey")
        b.drop_column("orphan_enterprise_id")
        b.alter_column("domain_id", existing_type=sa.Integer(), nullable=False)

"""contents.sent_day: the Date: header's calendar day in its own zone

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-02

SENTON / SENTBEFORE / SENTSINCE compare the date as written in the Date:
header (RFC 3501 §6.4.4); sent_date is that instant in UTC, which loses the
zone. Existing contents are filled in batches from the Date: line of their
decoded headers (headers_text) where it parses to the stored sent_date; the
rest keep NULL and are searched by the UTC day of sent_date, as before.
"""

from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import parsedate_tz

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None

_BATCH = 1000
_EPOCH = date(1970, 1, 1).toordinal()


def _day(headers: str, sent: int) -> int | None:
    """The written day of the first Date: line, if it is the stored instant."""
    for line in headers.split("\n"):
        name, sep, value = line.partition(": ")
        if sep and name.lower() == "date":
            break
    else:
        return None
    try:
        t = parsedate_tz(value)
        if t is None:
            return None
        local = datetime(*t[:6], tzinfo=timezone(timedelta(seconds=t[9] or 0)))
        if int(local.astimezone(UTC).timestamp()) != sent:
            return None
        return local.toordinal() - _EPOCH
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def upgrade() -> None:
    with op.batch_alter_table("contents", schema=None) as b:
        b.add_column(sa.Column("sent_day", sa.Integer(), nullable=True))
    conn = op.get_bind()
    contents = sa.table(
        "contents", sa.column("id", sa.Integer), sa.column("sent_date", sa.BigInteger),
        sa.column("headers_text", sa.Text), sa.column("sent_day", sa.Integer),
    )
    update = (
        contents.update()
        .where(contents.c.id == sa.bindparam("cid"))
        .values(sent_day=sa.bindparam("day"))
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(contents.c.id, contents.c.sent_date, contents.c.headers_text)
            .where(contents.c.id > last, contents.c.sent_date.is_not(None))
            .order_by(contents.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        params = [
            {"cid": r.id, "day": day}
            for r in rows
            if (day := _day(r.headers_text, r.sent_date)) is not None
        ]
        if params:
            conn.execute(update, params)


def downgrade() -> None:
    with op.batch_alter_table("contents", schema=None) as b:
        b.drop_column("sent_day")

"""The mail log (manual §4.4.8, §5.5.7): one row per recipient of every
message in and out, in table mail_log; docs/mail-log.md.

Rows are buffered and written in one transaction per batch (at most FLUSH_DELAY
seconds late), so SMTP ingest pays an append to a list, not a database write.
The log is a record, not the mail: a batch that cannot be written is reported
in the daemon's log and dropped; mail is never held up for it.

Direction is where the copy went: "in" for a copy stored in a mailbox here,
"out" for one relayed through the outbound queue.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.codec.csvrows import rows_csv
from exmaild.store import model as m

log = Logger()
L = m.mail_log.c

FLUSH_DELAY = 1.0  # seconds a row may wait in the buffer
FLUSH_ROWS = 500  # a fuller buffer is written at once
STATUSES = ("delivered", "queued", "deferred", "bounced", "refused", "junk")
COLUMNS = ("time", "direction", "sender", "recipient", "written_to", "subject", "size",
           "status", "queue_id", "client")


class MailLogWriter:
    """The buffer in front of mail_log; one per Store."""

    def __init__(self, pool: Any, reactor: Any) -> None:
        self.pool, self.reactor = pool, reactor
        self._rows: list[tuple[str, dict[str, Any]]] = []
        self._timer: Any = None
        self._flushing: defer.Deferred[None] | None = None

    def add(self, *, direction: str, sender: str, recipient: str = "",
            account_id: int | None = None, written_to: str = "", subject: str = "",
            size: int = 0, status: str, queue_id: str = "", client: str = "") -> None:
        """One recipient's row; `account_id` names the member reached (its
        address is looked up at write time) when `recipient` is an alias or group."""
        self._push("add", {
            "created": int(time.time()), "direction": direction, "sender": sender[:320],
            "recipient": recipient[:320], "account_id": account_id,
            "written_to": written_to[:320], "subject": subject[:200], "size": size,
            "status": status, "queue_id": queue_id[:32], "client": client[:64]})

    def outcome(self, *, queue_id: str, recipient: str, status: str, sender: str,
                size: int) -> None:
        """A queued recipient's new status (its row is added if there is none)."""
        self._push("outcome", {"queue_id": queue_id[:32], "recipient": recipient[:320],
                               "status": status, "sender": sender[:320], "size": size})

    def _push(self, kind: str, row: dict[str, Any]) -> None:
        self._rows.append((kind, row))
        if len(self._rows) >= FLUSH_ROWS:
            self._kick(0)
        elif self._timer is None:
            self._kick(FLUSH_DELAY)

    def _kick(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if delay > 0:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._flushing is not None or not self._rows:
            return  # the running flush re-arms the timer when it ends
        rows, self._rows = self._rows, []
        self._flushing = defer.Deferred.fromCoroutine(self._flush(rows))

    async def _flush(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            await self.pool.transaction(lambda conn: write(conn, rows))
        except Exception:
            log.failure("mail log: {n} row(s) could not be written", n=len(rows))
        finally:
            self._flushing = None
            if self._rows and self._timer is None:
                self._kick(0)

    def flush_sync(self, transaction_sync: Any) -> None:
        """Write what is buffered now (at shutdown, the pool still running)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        rows, self._rows = self._rows, []
        if rows:
            try:
                transaction_sync(lambda conn: write(conn, rows))
            except Exception:
                log.failure("mail log: {n} row(s) could not be written", n=len(rows))

    async def drain(self) -> None:
        """Wait until everything added so far is written (tests, the CLI)."""
        while self._rows or self._flushing is not None:
            if self._flushing is not None:
                await self._flushing
            elif self._rows:
                self._start_flush()


def write(conn: sa.Connection, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Insert and update one batch, in order."""
    ids = {r["account_id"] for k, r in rows if k == "add" and r["account_id"] is not None}
    addrs = dict(conn.execute(sa.select(m.accounts.c.id, m.accounts.c.address)
                              .where(m.accounts.c.id.in_(ids))).all()) if ids else {}
    domains: set[str] = set()
    for k, r in rows:
        if k == "add" and r["account_id"] is not None:
            r["recipient"] = addrs.get(r["account_id"], r["recipient"])
            if r["written_to"].lower() == r["recipient"].lower():
                r["written_to"] = ""
        domains.add(_domain(r["sender"]))
        domains.add(_domain(r["recipient"]))
    ent = dict(conn.execute(sa.select(m.domains.c.name, m.domains.c.enterprise_id)
                            .where(m.domains.c.name.in_(domains - {""}))).all())
    inserts = []
    for k, r in rows:
        # An incoming copy belongs to the recipient's enterprise, an outgoing
        # one to the sender's.
        if k == "add":
            own = r["recipient"] if r["direction"] == "in" else r["sender"]
            r = {**r, "enterprise_id": ent.get(_domain(own))}
            del r["account_id"]
            inserts.append(r)
            continue
        if inserts:  # keep the order: a row queued in this batch is updated below
            conn.execute(m.mail_log.insert(), inserts)
            inserts = []
        done = conn.execute(m.mail_log.update().where(
            L.queue_id == r["queue_id"], L.recipient == r["recipient"], L.direction == "out")
            .values(status=r["status"])).rowcount
        if not done:  # relayed without an ingest row (a report, a Sieve redirect)
            inserts.append({"created": int(time.time()), "direction": "out",
                            "sender": r["sender"], "recipient": r["recipient"],
                            "written_to": "", "subject": "", "size": r["size"],
                            "status": r["status"], "queue_id": r["queue_id"], "client": "",
                            "enterprise_id": ent.get(_domain(r["sender"]))})
    if inserts:
        conn.execute(m.mail_log.insert(), inserts)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def writer_of(store: Any) -> MailLogWriter:
    w = getattr(store, "mail_log", None)
    if w is None:
        w = store.mail_log = MailLogWriter(store.pool, store.reactor)
    return w


# -- queries -----------------------------------------------------------------------------------
def query(conn: sa.Connection, *, enterprise_id: int | None = None,
          since: int | None = None, until: int | None = None, direction: str | None = None,
          member: str | None = None, sender: str | None = None,
          recipient: str | None = None, domain: str | None = None,
          subject: str | None = None, status: str | None = None,
          addresses: list[str] | None = None, limit: int = 100, offset: int = 0
          ) -> tuple[int, list[dict[str, Any]]]:
    """(total, rows newest first). `member` matches either end; `subject` is
    a case-insensitive substring."""
    where: list[Any] = []
    if enterprise_id is not None:
        where.append(L.enterprise_id == enterprise_id)
    if since is not None:
        where.append(L.created >= since)
    if until is not None:
        where.append(L.created < until)
    if direction:
        where.append(L.direction == direction)
    if member:
        a = member.strip().lower()
        where.append(sa.or_(sa.func.lower(L.sender) == a, sa.func.lower(L.recipient) == a))
    if sender:
        where.append(sa.func.lower(L.sender) == sender.strip().lower())
    if recipient:
        where.append(sa.func.lower(L.recipient) == recipient.strip().lower())
    if domain:
        d = "%@" + domain.strip().lower().replace("%", "").replace("_", r"\_")
        where.append(sa.or_(sa.func.lower(L.sender).like(d, escape="\\"),
                            sa.func.lower(L.recipient).like(d, escape="\\")))
    if subject:
        s = "%" + subject.lower().replace("\\", "\\\\").replace("%", r"\%").replace(
            "_", r"\_") + "%"
        where.append(sa.func.lower(L.subject).like(s, escape="\\"))
    if status:
        where.append(L.status == status)
    if addresses is not None:  # a graded administrator's members, at either end
        where.append(sa.or_(L.sender.in_(addresses), L.recipient.in_(addresses)))
    total = conn.execute(sa.select(sa.func.count()).select_from(m.mail_log)
                         .where(*where)).scalar_one()
    rows = conn.execute(sa.select(m.mail_log).where(*where)
                        .order_by(L.id.desc()).limit(limit).offset(offset))
    return total, [row_out(r) for r in rows]


def counts(conn: sa.Connection, enterprise_id: int, domain: str, since: int,
           until: int) -> tuple[int, int]:
    """(sent, received) copies of a domain's mail in [since, until); refused
    ones are neither."""
    d = "%@" + domain.strip().lower().replace("%", "").replace("_", r"\_")

    def n(*where: Any) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(m.mail_log).where(
            L.enterprise_id == enterprise_id, L.created >= since, L.created < until,
            L.status != "refused", *where)).scalar_one()

    return (n(sa.func.lower(L.sender).like(d, escape="\\")),
            n(sa.func.lower(L.recipient).like(d, escape="\\"), L.direction == "in"))


def row_out(r: Any) -> dict[str, Any]:
    return {"time": r.created, "direction": r.direction, "sender": r.sender,
            "recipient": r.recipient, "written_to": r.written_to, "subject": r.subject,
            "size": r.size, "status": r.status, "queue_id": r.queue_id, "client": r.client}


def to_csv(rows: list[dict[str, Any]]) -> str:
    return rows_csv(COLUMNS, rows)


def sweep(conn: sa.Connection, before: int, batch: int) -> int:
    """Remove up to `batch` rows older than `before`; how many went."""
    ids = [i for (i,) in conn.execute(sa.select(L.id).where(L.created < before)
                                      .order_by(L.id).limit(batch))]
    if not ids:
        return 0
    return conn.execute(m.mail_log.delete().where(L.id.in_(ids))).rowcount

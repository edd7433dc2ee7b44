"""From delivery outcomes to recorded statuses and DSNs.

`plan_outcomes` is pure: the new status of each recipient (sent, bounced,
deferred with its next attempt, or expired once past the lifetime) and which
of them the sender hears about (dsn.notify_allows). `Notifier.record` then
commits it. When there is a report, the status update runs inside the ingest
transaction that stores the report — into the sender's INBOX when the sender
is a local member, or into the queue (null sender) for a remote one — so a
recorded bounce always has its DSN, and a crash before the commit just means
the attempt happens again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.config import Config, QueueConfig
from exmaild.logsetup import maillog
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.rfc822 import message_id_of
from exmaild.mailstore.service import MailStore
from exmaild.queue import work
from exmaild.queue.delivery import BOUNCE, SENT, Batch, Outcome
from exmaild.queue.dsn import (
    DELAYED,
    FAILED,
    RELAYED,
    ReportedRecipient,
    build_dsn,
    notification_kind,
    notify_allows,
)
from exmaild.queue.records import BOUNCED, DEFERRED, EXPIRED, QueuedRecipient, new_queue_id
from exmaild.queue.records import SENT as SENT_STATUS
from exmaild.queue.store import enqueue
from exmaild.store.connector import Store

log = Logger()
_mail = Logger(namespace="exmaild.maillog")

HEADER_READ = 256 * 1024


def mail_text(queue_id: str, text: str) -> None:
    """A maillog line that is plain text (`QUEUEID: removed`)."""
    _mail.info("{queue_id}: {text}", queue_id=queue_id, text=text)


def next_attempt(q: QueueConfig, attempts: int, now: int, created: int, lifetime: int) -> int:
    """When to try again after failed attempt number `attempts + 1`."""
    wait = q.retry_schedule[min(attempts, len(q.retry_schedule) - 1)]
    return min(now + wait, created + lifetime)


@dataclass
class Plan:
    updates: list[work.Update]  # in the order of the outcomes
    reports: list[ReportedRecipient]
    full: bool  # return the whole message (a failure report, RET is not HDRS)
    retry_at: dict[int, int]  # when a recipient would be retried, for `fallback`

    @property
    def kind(self) -> str:
        return notification_kind(self.reports)

    def fallback(self) -> list[work.Update]:
        """The updates when the report could not be stored: what needed a report
        stays pending, so it is reported after the next attempt instead."""
        out = []
        for u in self.updates:
            if u.status in (BOUNCED, EXPIRED) and u.rid in self.retry_at:
                u = work.Update(u.rid, DEFERRED, self.retry_at[u.rid], u.reply, u.relay)
            elif u.delay_notified:
                u = work.Update(u.rid, u.status, u.next_attempt, u.reply, u.relay)
            out.append(u)
        return out


@dataclass
class Recorded:
    removed: bool  # the message left the queue (content reference released)
    logs: list[Callable[[], None]]  # maillog lines about the report, to follow the attempt's


def plan_outcomes(batch: Batch, outcomes: list[Outcome], now: int, q: QueueConfig) -> Plan:
    lifetime = q.bounce_lifetime if batch.sender == "" else q.lifetime
    by_id = {r.id: r for r in batch.rcpts}
    updates: list[work.Update] = []
    reports: list[ReportedRecipient] = []
    retry_at: dict[int, int] = {}
    age = now - batch.created
    for o in outcomes:
        r = by_id[o.rid]
        retry = next_attempt(q, r.attempts, now, batch.created, lifetime)
        action: str | None = None
        if o.action == SENT:
            updates.append(work.Update(r.id, SENT_STATUS, None, o.text, o.relay))
            if not o.remote_dsn and notify_allows(batch.sender, r.notify, RELAYED):
                action = RELAYED
        elif o.action == BOUNCE:
            updates.append(work.Update(r.id, BOUNCED, None, o.text, o.relay))
            retry_at[r.id] = retry
            action = FAILED if notify_allows(batch.sender, r.notify, FAILED) else None
        elif age >= lifetime:
            updates.append(work.Update(r.id, EXPIRED, None, o.text, o.relay))
            retry_at[r.id] = max(retry, now + q.retry_schedule[-1])
            action = FAILED if notify_allows(batch.sender, r.notify, FAILED) else None
        else:
            warn = (
                q.delay_warning > 0 and age >= q.delay_warning and not r.delay_notified
                and notify_allows(batch.sender, r.notify, DELAYED)
            )
            updates.append(work.Update(r.id, DEFERRED, retry, o.text, o.relay, warn))
            action = DELAYED if warn else None
        if action is not None:
            reports.append(ReportedRecipient(
                address=r.address, orcpt=r.orcpt, action=action,
                status=o.status if action != RELAYED else "2.0.0",
                reason=o.text, remote_mta=o.remote_mta, diagnostic=o.diagnostic,
                last_attempt=now,
                retry_until=batch.created + lifetime if action == DELAYED else None,
            ))
    full = any(r.action == FAILED for r in reports) and (batch.ret or "").upper() != "HDRS"
    return Plan(updates, reports, full, retry_at)


async def report_destination(store: Store, sender: str) -> tuple[str, int | None]:
    """Where a report to `sender` goes: ("local", account id), ("remote",
    None), or ("unknown", None) for an address of ours with no mailbox."""
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    if await store.directory.get_domain(domain) is None:
        return "remote", None
    acct = await store.directory.get_account(sender)
    return ("local", acct.id) if acct is not None else ("unknown", None)


def report_request(
    raw: bytes, dsn_id: str, sender: str, account: int | None,
    apply: Callable[[sa.Connection], Any] | None = None,
) -> IngestRequest:
    """The ingest request that delivers a report: into the INBOX of a local
    sender (`account`), or queued to a remote one; `apply(conn)` runs in the
    same transaction and its result is the ingest result's `extra`."""
    if account is not None:
        return IngestRequest(
            b"Return-Path: <>\r\n" + raw, [Target(account, "INBOX")], check_quota=False,
            extra=None if apply is None else (lambda conn, _cid: apply(conn)),
        )

    def extra(conn: sa.Connection, content_id: int) -> Any:
        enqueue(conn, queue_id=dsn_id, content_id=content_id, sender="",
                recipients=[QueuedRecipient(sender)])
        return None if apply is None else apply(conn)

    return IngestRequest(raw, [], extra=extra)


def local_report_logs(dsn_id: str, sender: str, res: Any) -> list[Callable[[], None]]:
    """The mail log lines of a report delivered to a local sender's INBOX."""
    status = "delivered (delivered to INBOX)" if res.delivered else (
        f"bounced ({', '.join(r.reason for r in res.refused)})")
    return [
        lambda: maillog(dsn_id, to=sender, relay="local", delay="0", dsn="2.0.0", status=status),
        lambda: mail_text(dsn_id, "removed"),
    ]


async def store_report(app: Any, queue_id: str, dsn_id: str, raw: bytes, sender: str,
                       where: str, account: int | None, what: str) -> None:
    """Store a report made while the message was accepted (`where`/`account`
    from report_destination): into the local sender's INBOX, or queued for a
    remote one; the mail log says so under both queue ids."""
    res = await app.store.ingestor.ingest(report_request(raw, dsn_id, sender, account))
    mail_text(queue_id, f"sender {what}: {dsn_id}")
    maillog(dsn_id, **{"message-id": message_id_of(raw)})
    maillog(dsn_id, **{"from": "", "size": len(raw), "nrcpt": "1 (queue active)"})
    if where == "local":
        for line in local_report_logs(dsn_id, sender, res):
            line()
    elif app.queue is not None:
        app.queue.kick()


class Notifier:
    def __init__(self, cfg: Config, store: MailStore, runner: Any) -> None:
        self.cfg = cfg
        self.q = cfg.queue
        self.store = store
        self.runner = runner
        self.hostname = cfg.server.hostname

    async def record(self, batch: Batch, plan: Plan, now: int) -> Recorded:
        """Commit the plan, with its report if it has one."""
        node = self.runner.node

        def apply(updates: list[work.Update]) -> Any:
            return lambda conn: work.apply(
                conn, node=node, now=now, message_id=batch.message_id, updates=updates
            )

        if plan.reports:
            try:
                return await self._with_report(batch, plan, apply(plan.updates))
            except Exception:
                log.failure("{queue_id}: cannot store the delivery report; retrying later",
                            queue_id=batch.queue_id)
                return Recorded(await self.store.pool.transaction(apply(plan.fallback())), [])
        return Recorded(await self.store.pool.transaction(apply(plan.updates)), [])

    async def _with_report(self, batch: Batch, plan: Plan, apply: Any) -> Recorded:
        original, headers_only = await self._original(batch, plan.full)
        dsn_id = new_queue_id()
        raw = build_dsn(
            hostname=self.hostname, queue_id=batch.queue_id, sender=batch.sender,
            envid=batch.envid, arrival=batch.created, recipients=plan.reports,
            original=original, headers_only=headers_only, message_id_token=dsn_id,
        )
        where, account = await report_destination(self.store, batch.sender)
        if where == "unknown":
            log.warn("{queue_id}: no mailbox for local sender {sender}; report dropped",
                     queue_id=batch.queue_id, sender=batch.sender)
            return Recorded(await self.store.pool.transaction(apply), [])
        logs = [
            lambda: mail_text(batch.queue_id, f"sender {plan.kind} notification: {dsn_id}"),
            lambda: maillog(dsn_id, **{"message-id": message_id_of(raw)}),
            lambda: maillog(dsn_id, **{"from": "", "size": len(raw), "nrcpt": "1 (queue active)"}),
        ]
        res = await self.store.ingestor.ingest(
            report_request(raw, dsn_id, batch.sender, account, apply))
        if where == "local":
            logs += local_report_logs(dsn_id, batch.sender, res)
        else:
            self.runner.kick()
        return Recorded(res.extra, logs)

    async def _original(self, batch: Batch, full: bool) -> tuple[bytes, bool]:
        """The message to return: whole if asked and small enough, else its header."""
        ref = (await self.store.blob_refs([batch.content_id])).get(batch.content_id)
        if ref is None:
            return b"", True
        read = self.store.blobs.read
        total = ref.size - batch.body_offset
        if full and total <= self.q.bounce_size_limit:
            return await self.store.pool.call(read, ref, batch.body_offset, total), False
        return await self.store.pool.call(read, ref, batch.body_offset, HEADER_READ), True

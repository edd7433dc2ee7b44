"""The SMTP side of Sieve: what protocols/smtp/delivery.py calls, kept here
so that the delivery module only gains a few lines.

- `run_scripts` before the ingest request is made (placement, redirects);
- `with_redirects` queues redirected copies of the stored content in the
  same ingest transaction, so a redirect is as durable as the 250;
- `after_delivery` sends vacation replies and reject reports after the 250.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.queue.records import QueuedRecipient, new_queue_id
from exmaild.queue.store import enqueue
from exmaild.sieve.delivery import Plan, Recipient, plan

log = Logger(namespace="exmaild.sieve")


async def run_scripts(d: Any, message: Any, head: bytes, start: int) -> Plan | None:
    """The recipients' scripts' plan for the message `head + message[start:]`."""
    txn = d.txn
    rcpts = [Recipient(r.account_id, r.address) for r in txn.local  # not a catch-all's
             if r.account_id is not None and not r.group and not r.catchall]
    direct = {r.account_id for r in rcpts}
    rcpts += [Recipient(aid, "") for aid in sorted(d.group_members - direct)]
    if not d.app.cfg.sieve.enabled:
        return None
    from exmaild.sieve.delivery import scripts_of

    with_rules = await scripts_of(d.app).accounts_with_rules()
    if not any(r.account_id in with_rules for r in rcpts):
        return None  # the common case: nothing to read, nothing to run
    from exmaild.mailstore.spool import SpooledMessage

    data = message.buffer() if isinstance(message, SpooledMessage) else message
    inbox = "\\Junk" if d.auth is not None and d.auth.junk else "INBOX"
    try:
        return await plan(d.app, txn.queue_id, rcpts, data, head=head, start=start,
                          sender=txn.sender, default_box=inbox)
    except Exception:
        log.failure("{queue_id}: Sieve failed; every recipient keeps the message",
                    queue_id=txn.queue_id)
        return None


async def send_rules(d: Any, message: Any, head: bytes, start: int) -> list[Any]:
    """The Sent copy's targets after the member's send rules (sendrules.py)."""
    from exmaild.mailstore.spool import SpooledMessage
    from exmaild.sieve.sendrules import sent_targets

    data = message.buffer() if isinstance(message, SpooledMessage) else message
    return await sent_targets(d.app, d.txn.queue_id, d.session.account, d.txn.sender, data,
                              head=head, start=start)


def with_redirects(extra: Callable[[sa.Connection, int], Any] | None, p: Plan, sender: str,
                   body_offset: int) -> Callable[[sa.Connection, int], Any]:
    """`extra` plus one queue entry per redirecting account (its own queue id)."""
    by_account: dict[int, list[str]] = {}
    for aid, addr in p.redirects:
        by_account.setdefault(aid, []).append(addr)

    def run(conn: sa.Connection, content_id: int) -> Any:
        out = extra(conn, content_id) if extra is not None else None
        for aid, addrs in by_account.items():
            qid = new_queue_id()
            enqueue(conn, queue_id=qid, content_id=content_id, sender=p.senders.get(aid, sender),
                    recipients=[QueuedRecipient(a) for a in dict.fromkeys(addrs)],
                    account_id=aid, body_offset=body_offset, trace=p.traces.get(aid))
            p.queued.append((qid, addrs))
        return out

    return run


def after_delivery(d: Any, req: Any) -> None:
    """After the 250: log redirects, send vacation replies and reject reports."""
    p: Plan = d.sieve_plan
    txn = d.txn
    from exmaild.protocols.smtp.delivery import mail_line

    for qid, addrs in p.queued:
        mail_line(txn.queue_id, f"Sieve redirect to {', '.join(addrs)}: {qid}")
    if p.queued and d.app.queue is not None:
        d.app.queue.kick()
    rejects = {aid: why for aid, why in p.rejects.items()}
    if not p.vacations and not rejects:
        return
    original = d._original(req)[0] if rejects else b""

    async def later() -> None:
        if p.vacations and p.context is not None:
            from exmaild.sieve.vacation import send_vacations

            await send_vacations(d.app, txn.queue_id, p.context, p.vacations)
        if rejects:
            await _reject_report(d, original, rejects)

    defer.Deferred.fromCoroutine(later()).addErrback(
        lambda f: log.failure("{queue_id}: Sieve follow-up failed", f, queue_id=txn.queue_id))


async def _reject_report(d: Any, original: bytes, rejects: dict[int, str]) -> None:
    """A non-delivery report for recipients whose script rejected the message
    when others took it (SMTP could not refuse it for them alone)."""
    from exmaild.queue.dsn import FAILED, ReportedRecipient, build_dsn
    from exmaild.queue.notify import report_destination, report_request

    txn, app = d.txn, d.app
    if not txn.sender:
        return
    by_id = {r.account_id: r.address for r in txn.local}
    where, account = await report_destination(app.store, txn.sender)
    if where == "unknown":
        return
    now = int(time.time())
    dsn_id = new_queue_id()
    raw = build_dsn(
        hostname=app.cfg.server.hostname, queue_id=txn.queue_id, sender=txn.sender,
        envid=txn.params.envid, arrival=int(txn.started),
        recipients=[ReportedRecipient(by_id.get(aid, "?"), None, FAILED, "5.7.1",
                                      " ".join(why.split())[:200] or "rejected",
                                      last_attempt=now)
                    for aid, why in rejects.items()],
        original=original, headers_only=True, message_id_token=dsn_id)
    await app.store.ingestor.ingest(report_request(raw, dsn_id, txn.sender, account))
    from exmaild.protocols.smtp.delivery import mail_line

    mail_line(txn.queue_id, f"Sieve reject report: {dsn_id}")
    if where == "remote" and app.queue is not None:
        app.queue.kick()

"""Failure reports for mail-group members whose mailbox refused a message.

Mail to a group is judged per recipient (issue #10, quotas): a member whose
mailbox is full (or gone) does not fail the copies of everybody else, as an
all-or-nothing 452 for the whole group would. That member's copy is refused
instead, and the sender gets a delivery status notification naming the member
and the reason (`Action: failed`, `Status: 5.2.2` for a full mailbox), as
Postfix's local delivery reports an over-quota mailbox. The report is stored
before the SMTP reply is sent, so the refusal is never silent; it follows the
client's NOTIFY of the group recipient (NEVER: no report, a log line only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from exmaild.logsetup import maillog
from exmaild.queue.dsn import FAILED, ReportedRecipient, build_dsn, notify_allows
from exmaild.queue.notify import report_destination, store_report
from exmaild.queue.records import new_queue_id

log = Logger()

# reason from the ingest refusal -> (RFC 3463 status, text for people)
_STATUS = {"overquota": ("5.2.2", "mailbox full (over quota)"),
           "nomailbox": ("5.2.0", "mailbox unavailable")}


@dataclass(frozen=True)
class MemberRefusal:
    address: str  # the member's address
    group: str  # the group recipient it was reached through (Original-Recipient)
    reason: str  # "overquota" | "nomailbox"


def log_refusals(queue_id: str, refusals: list[MemberRefusal]) -> None:
    for r in refusals:
        status, text = _STATUS.get(r.reason, ("5.3.0", r.reason))
        maillog(queue_id, to=r.address, orig_to=r.group, relay="local", dsn=status,
                status=f"bounced ({text})")


async def report_member_refusals(
    app: Any, txn: Any, refusals: list[MemberRefusal], original: bytes, *, whole: bool
) -> str | None:
    """Store the failure report for `refusals`; its queue id, or None when the
    sender asked for none (NOTIFY=NEVER, the null sender) or is ours without
    a mailbox."""
    groups = [r for r in txn.local if r.group]
    if not refusals or not any(notify_allows(txn.sender, g.notify, FAILED) for g in groups):
        return None
    where, account = await report_destination(app.store, txn.sender)
    if where == "unknown":
        log.warn("{queue_id}: no mailbox for local sender {sender}; report dropped",
                 queue_id=txn.queue_id, sender=txn.sender)
        return None
    now = int(time.time())
    dsn_id = new_queue_id()
    ret = txn.params.ret.value if txn.params.ret is not None else None
    recipients = []
    for r in refusals:
        status, text = _STATUS.get(r.reason, ("5.3.0", r.reason))
        recipients.append(ReportedRecipient(
            r.address, f"rfc822;{r.group}", FAILED, status,
            f"delivery to group member {r.address} of {r.group} failed: {text}",
            diagnostic=f"x-local; {status} {text}", last_attempt=now))
    raw = build_dsn(
        hostname=app.cfg.server.hostname, queue_id=txn.queue_id, sender=txn.sender,
        envid=txn.params.envid, arrival=int(txn.started), recipients=recipients,
        original=original, headers_only=ret == "HDRS" or not whole, message_id_token=dsn_id,
    )
    await store_report(app, txn.queue_id, dsn_id, raw, txn.sender, where, account,
                       "non-delivery notification")
    return dsn_id

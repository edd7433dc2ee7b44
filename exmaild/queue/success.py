"""Success reports for mail delivered to local mailboxes (RFC 3461 NOTIFY=SUCCESS).

A client that asked for NOTIFY=SUCCESS on a recipient of ours (Outlook's
"delivery receipt") gets a multipart/report with `Action: delivered` once the
message is in that mailbox, as Postfix's local delivery sends one. It is
written after the 250: the message itself is already durable; the report is
a new message from MAILER-DAEMON with the null sender, routed as every
report is (`notify.report_request`). By default it carries only the original
header (RFC 3461 §4.3: RET=FULL asks for the whole message).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

from exmaild.queue.dsn import DELIVERED, ReportedRecipient, build_dsn, notify_allows
from exmaild.queue.notify import (
    report_destination,
    store_report,
)
from exmaild.queue.records import new_queue_id

log = Logger()


def wanting_report(txn: Any) -> list[Any]:
    """`txn`'s local recipients that asked for a success report."""
    return [r for r in txn.local if notify_allows(txn.sender, r.notify, DELIVERED)]


async def report_local_delivery(
    app: Any, txn: Any, original: bytes, *, whole: bool
) -> str | None:
    """Send the success report for `wanting_report(txn)`; its queue id, or
    None when none was wanted or the sender (ours) has no mailbox.

    `original` is the message as relayed, or (`whole` false: it is larger
    than [queue] bounce_size_limit) its beginning, of which only the header
    is returned, as for every other report."""
    wanted = wanting_report(txn)
    if not wanted:
        return None
    where, account = await report_destination(app.store, txn.sender)
    if where == "unknown":
        log.warn("{queue_id}: no mailbox for local sender {sender}; report dropped",
                 queue_id=txn.queue_id, sender=txn.sender)
        return None
    now = int(time.time())
    dsn_id = new_queue_id()
    ret = txn.params.ret.value if txn.params.ret is not None else None
    raw = build_dsn(
        hostname=app.cfg.server.hostname, queue_id=txn.queue_id, sender=txn.sender,
        envid=txn.params.envid, arrival=int(txn.started),
        recipients=[
            ReportedRecipient(r.address, r.orcpt, DELIVERED, "2.0.0", "delivered to mailbox",
                              last_attempt=now)
            for r in wanted
        ],
        original=original, headers_only=ret != "FULL" or not whole, message_id_token=dsn_id,
    )
    await store_report(app, txn.queue_id, dsn_id, raw, txn.sender, where, account,
                       "delivery status notification")
    return dsn_id

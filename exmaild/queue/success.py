"""Success reports for mail delivered to local mailboxes (RFC 3461 NOTIFY=SUCCESS).

A client that asked for NOTIFY=SUCCESS on a recipient of ours (Outlook's
"delivery receipt") gets a multipart/report with `Action: delivered` once the
message is in that mailbox, as Postfix's local delivery sends one. It is
written after the 250: the message itself is already durable; the report is
a new message from MAILER-DAEMON with the null sender, into the sender's
INBOX when the sender is one of ours, else queued to the sender's server.
By default it carries only the original header (RFC 3461 §4.3: RET=FULL asks
for the whole message).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

from exmaild.logsetup import maillog
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.queue.dsn import DELIVERED, ReportedRecipient, build_dsn, notify_allows
from exmaild.queue.records import QueuedRecipient, new_queue_id
from exmaild.queue.store import enqueue

log = Logger(namespace="exmaild.maillog")


async def report_local_delivery(app: Any, txn: Any, blob: bytes, body_offset: int) -> str | None:
    """Send the success report for `txn`'s local recipients that asked for
    one; returns the report's queue id, or None when none was wanted."""
    wanted = [r for r in txn.local if notify_allows(txn.sender, r.notify, DELIVERED)]
    if not wanted:
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
        original=blob[body_offset:], headers_only=ret != "FULL", message_id_token=dsn_id,
    )
    store = app.store
    domain = txn.sender.rpartition("@")[2].lower().rstrip(".")
    log.info("{queue_id}: sender delivery status notification: {dsn_id}",
             queue_id=txn.queue_id, dsn_id=dsn_id)
    maillog(dsn_id, **{"from": "", "size": len(raw), "nrcpt": "1 (queue active)"})
    if await store.directory.get_domain(domain) is not None:
        acct = await store.directory.get_account(txn.sender)
        if acct is None:
            log.warn("{queue_id}: no mailbox for local sender {sender}; report dropped",
                     queue_id=dsn_id, sender=txn.sender)
            return dsn_id
        res = await store.ingestor.ingest(IngestRequest(
            b"Return-Path: <>\r\n" + raw, [Target(acct.id, "INBOX")], check_quota=False))
        status = "sent (delivered to mailbox)" if res.delivered else "bounced (no mailbox)"
        maillog(dsn_id, to=txn.sender, relay="local", delay="0", dsn="2.0.0", status=status)
        return dsn_id

    def extra(conn: Any, content_id: int) -> int:
        return enqueue(conn, queue_id=dsn_id, content_id=content_id, sender="",
                       recipients=[QueuedRecipient(txn.sender)])

    await store.ingestor.ingest(IngestRequest(raw, [], extra=extra))
    if app.queue is not None:
        app.queue.kick()
    return dsn_id

"""From an accepted SMTP transaction to stored mail: one ingest request.

The stored blob is `Return-Path:` + `Received:` (+ Message-ID/Date a
submitting client left out) + the message as received. One blob serves every
copy: each local recipient's INBOX, the sender's Sent folder, and the queue
for remote recipients, which skips the Return-Path line (`body_offset`).

All of it is one ingest transaction (group-committed with other sessions'
messages), so when `deliver()` returns 250 the message is durably in every
local mailbox and in the queue for everyone else. Anything else is a 4xx and
nothing was stored: ingest is all-or-nothing per message (`all_or_nothing`:
if one local recipient's mailbox refuses it, e.g. over quota since RCPT, no
recipient gets it and the client retries the whole message later).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from email.utils import format_datetime
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.logsetup import maillog
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.replies import Reply
from exmaild.protocols.smtp.session import Session, Transaction, address_literal
from exmaild.queue.records import DELIVERED, QueuedRecipient
from exmaild.queue.store import enqueue
from exmaild.queue.success import report_local_delivery, wanting_report
from exmaild.store import flags
from exmaild.store.errors import storage_full

log = Logger(namespace="exmaild.smtp")

# A header field name at the start of a line, in the header section.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:")
_DATE = re.compile(rb"(?im)^date[ \t]*:")
_HELO_UNSAFE = re.compile(r"[^\x21-\x7e]|[();\\\"]")


_stamp: tuple[int, str] = (0, "")


def _now_text(now: float) -> str:
    """RFC 5322 date-time in local time; made once per second, not per message."""
    global _stamp
    second = int(now)
    if _stamp[0] != second:
        _stamp = (second, format_datetime(datetime.fromtimestamp(second).astimezone()))
    return _stamp[1]


def trace_headers(
    session: Session, txn: Transaction, *, hostname: str, tls: str | None, now: float
) -> tuple[bytes, bytes]:
    """(Return-Path line, Received: field) for this transaction (RFC 5321 §4.4)."""
    return_path = f"Return-Path: <{txn.sender}>\r\n".encode()
    helo = _HELO_UNSAFE.sub("_", session.helo or "")[:255] or "unknown"
    lines = [f"Received: from {helo} ({address_literal(session.ip)})"]
    if tls:
        lines.append(f"\t(using {tls})")
    by = f"\tby {hostname} (exmaild) with {session.proto} id {txn.queue_id}"
    stamp = _now_text(now)
    if len(txn.recipients) == 1:  # naming one recipient reveals no Bcc
        lines += [by, f"\tfor <{txn.recipients[0].address}>; {stamp}"]
    else:
        lines.append(f"{by}; {stamp}")
    return return_path, ("\r\n".join(lines) + "\r\n").encode()


def missing_headers(message: bytes, *, hostname: str, queue_id: str, now: float) -> bytes:
    """Message-ID and Date for a submitted message that lacks them (RFC 6409 §8)."""
    end = _HEADER_END.search(message)
    header = message[: end.start() + 1] if end else message
    if message.startswith((b"\r\n", b"\n")):
        header = b""
    out = b""
    if not _MESSAGE_ID.search(header):
        out += f"Message-ID: <{int(now)}.{queue_id}@{hostname}>\r\n".encode()
    if not _DATE.search(header):
        out += f"Date: {_now_text(now)}\r\n".encode()
    return out


def header_end(message: bytes) -> int:
    """Offset where fields can be appended to the header section."""
    if message.startswith((b"\r\n", b"\n")):
        return 0
    end = _HEADER_END.search(message)
    if end is None:
        return len(message)
    return end.start() + (2 if message[end.start()] == 13 else 1)


def tls_description(transport: Any) -> str | None:
    """`TLSv1.3 with cipher TLS_AES_256_GCM_SHA384`, if the transport is TLS."""
    try:
        conn = transport.getHandle()
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
    except Exception:
        return None
    if not version or not cipher or version == "Unknown":
        return None
    return f"{version} with cipher {cipher}"


class Delivery:
    """One accepted transaction's message, on its way into the store."""

    def __init__(self, app: Any, session: Session, txn: Transaction, *, tls: str | None,
                 auth: Any = None) -> None:
        self.app = app
        self.auth = auth  # mailauth Verdict: Authentication-Results, Junk or not
        self.session = session
        self.txn = txn
        self.tls = tls
        self.hostname = app.cfg.server.hostname

    def build(self, message: bytes, now: float) -> tuple[bytes, int]:
        """The blob to store and the length of its Return-Path line."""
        return_path, received = trace_headers(
            self.session, self.txn, hostname=self.hostname, tls=self.tls, now=now
        )
        if self.session.account is not None:
            added = missing_headers(
                message, hostname=self.hostname, queue_id=self.txn.queue_id, now=now
            )
            if added:
                cut = header_end(message)
                message = message[:cut] + added + message[cut:]
        if self.auth is not None:
            message = self.auth.apply(message)
        return b"".join((return_path, received, message)), len(return_path)

    def request(self, blob: bytes, body_offset: int) -> IngestRequest:
        s, txn = self.session, self.txn
        inbox = "\\Junk" if self.auth is not None and self.auth.junk else "INBOX"
        targets = [Target(r.account_id, inbox) for r in txn.local if r.account_id is not None]
        submitted = s.account is not None
        if submitted and s.account.setting("save_sent"):
            targets.append(Target(s.account.id, "\\Sent", flags.SEEN, optional=True))
        extra = None
        if txn.remote or submitted:
            extra = self._queue_extra(body_offset, record_local=submitted)
        return IngestRequest(
            blob, targets, check_quota=True, extra=extra, origin=None, all_or_nothing=True
        )

    def _queue_extra(self, body_offset: int, *, record_local: bool) -> Any:
        txn, account = self.txn, self.session.account
        rcpts = [QueuedRecipient(r.address, notify=r.notify, orcpt=r.orcpt) for r in txn.remote]
        if record_local:  # the member's delivery-status view (manual §5.5.4)
            rcpts += [
                QueuedRecipient(r.address, notify=r.notify, orcpt=r.orcpt, status=DELIVERED)
                for r in txn.local
            ]
        params = txn.params

        def extra(conn: sa.Connection, content_id: int) -> int:
            return enqueue(
                conn,
                queue_id=txn.queue_id,
                content_id=content_id,
                sender=txn.sender,
                recipients=rcpts,
                envid=params.envid,
                ret=params.ret.value if params.ret else None,
                account_id=account.id if account is not None else None,
                body_offset=body_offset,
            )

        return extra

    async def deliver(self, message: bytes) -> Reply:
        """Store the message; the reply for the end of DATA."""
        txn = self.txn
        now = time.time()
        blob, body_offset = self.build(message, now)
        try:
            res = await self.app.store.ingestor.ingest(self.request(blob, body_offset))
        except Exception as e:
            if storage_full(e):  # a full disk: said in one line, not a traceback each
                log.error("{queue_id}: no room to store the message: {error}",
                          queue_id=txn.queue_id, error=str(e))
                return R.INSUFFICIENT_STORAGE
            log.failure("{queue_id}: storing the message failed", queue_id=txn.queue_id)
            return R.LOCAL_ERROR
        required = [r for r in res.refused if not r.target.optional]
        if required:
            return self._refused(required)
        self._log(res, len(blob), now)
        if txn.remote and self.app.queue is not None:
            self.app.queue.kick()
        if wanting_report(txn):
            # After the 250, not before it: the message is stored either way.
            report = defer.Deferred.fromCoroutine(
                report_local_delivery(self.app, txn, blob, body_offset))
            report.addErrback(lambda f: log.failure(
                "{queue_id}: the success report could not be sent", f, queue_id=txn.queue_id))
        return R.queued(txn.queue_id)

    def _refused(self, refused: list[Any]) -> Reply:
        by_id = {r.account_id: r.address for r in self.txn.local}
        first = refused[0]
        who = by_id.get(first.target.account_id, "?")
        for r in refused:
            maillog(
                self.txn.queue_id,
                to=by_id.get(r.target.account_id, "?"),
                relay="local",
                dsn="4.2.2" if r.reason == "overquota" else "4.3.0",
                status=f"deferred (mailbox refused the message: {r.reason})",
            )
        if first.reason == "overquota":
            return R.MAILBOX_FULL.prefixed(f"<{who}>:")
        return R.LOCAL_ERROR

    def _log(self, res: Any, size: int, now: float) -> None:
        # Three lines per message, as the Postfix lines ops know (smtpd's
        # client= at the first RCPT, then qmgr's from= and the delivery's to=);
        # each log event costs real CPU at thousands of messages a second.
        txn = self.txn
        qid = txn.queue_id
        maillog(
            qid,
            **{"from": txn.sender, "size": size, "nrcpt": f"{len(txn.recipients)} (queue active)"},
            **(self.auth.log_fields if self.auth is not None else {}),
        )
        delay = f"{now - txn.started:.2f}"
        for r in txn.local:
            maillog(
                qid,
                to=r.address,
                relay="local",
                delay=delay,
                dsn="2.0.0",
                status="sent (delivered to mailbox)",
            )


_mail = Logger(namespace="exmaild.maillog")


def mail_line(queue_id: str, text: str) -> None:
    """A free-form mail log line in `maillog`'s format (`NOQUEUE: reject: ...`)."""
    _mail.info("{queue_id}: {text}", queue_id=queue_id, text=text)

"""Vacation replies (RFC 5230, RFC 3834), sent after the message is stored.

A reply goes to the envelope sender with a null return path, into the
sender's INBOX when the sender is a member here, else through the outbound
queue (where `exmailctl queue list --all` shows it). It is never sent to the
null sender, to list or bulk mail, to automatic mail, to the member's own
addresses, or for mail that does not name the member in To/Cc/Bcc; and at
most once per sender and handle within the period (table vacation_replies).
"""

from __future__ import annotations

import time
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.logsetup import maillog
from exmaild.queue.notify import local_report_logs, mail_text, report_destination, report_request
from exmaild.queue.records import new_queue_id
from exmaild.sieve.delivery import Recipient, claim_vacation
from exmaild.sieve.interp import Vacation
from exmaild.sieve.message import MessageContext
from exmaild.store import model as m

log = Logger(namespace="exmaild.sieve")

_LIST_FIELDS = ("list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
                "list-owner", "list-archive")
_SYSTEM_LOCALS = ("mailer-daemon", "postmaster", "listserv", "majordomo", "owner-", "-request",
                  "noreply", "no-reply", "bounce")


def why_not(msg: MessageContext, own: set[str]) -> str | None:
    """Why no reply may go to this message's sender, or None."""
    sender = msg.envelope_from.strip().lower()
    if not sender or sender == "<>":
        return "null sender"
    local = sender.rpartition("@")[0]
    if any(local.startswith(p) if p.endswith("-") else
           local.endswith(p) if p.startswith("-") else local == p for p in _SYSTEM_LOCALS):
        return "system sender"
    if sender in own:
        return "own address"
    for v in msg.raw_headers("auto-submitted"):
        if v.strip().lower().split(";")[0].strip() != "no":
            return "Auto-Submitted"
    for v in msg.raw_headers("precedence"):
        if v.strip().lower() in ("bulk", "list", "junk"):
            return f"Precedence: {v.strip()}"
    if any(msg.raw_headers(f) for f in _LIST_FIELDS):
        return "mailing list"
    if msg.raw_headers("x-auto-response-suppress") and any(
            t in v.lower() for v in msg.raw_headers("x-auto-response-suppress")
            for t in ("all", "oof", "autoreply")):
        return "X-Auto-Response-Suppress"
    named = {a.lower() for f in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
             for a in msg.addresses(f)}
    if not named & own:
        return "not addressed to the member in To/Cc/Bcc"
    return None


def known_sender(conn: sa.Connection, account_id: int, own: set[str], sender: str) -> bool:
    """A sender the member knows: on its allow list (address or domain), or
    an address the mail log shows it has sent mail to (any of its addresses;
    as far back as the log keeps rows, [log] mail_retention_days)."""
    from exmaild.sieve import senders

    if any(e.list == "allow" and senders.matches(e.pattern, sender)
           for e in senders.entries(conn, account_id)):
        return True
    L = m.mail_log.c
    who = list(dict.fromkeys([sender, sender.lower()]))
    return conn.execute(sa.select(L.id).where(L.recipient.in_(who), L.sender.in_(sorted(own)))
                        .limit(1)).first() is not None


def build_reply(msg: MessageContext, v: Vacation, me: str, hostname: str, now: float) -> bytes:
    subject = v.subject
    if subject is None:
        original = (msg.headers("subject") or [""])[0]
        subject = "Auto: " + original if original else "Automatic reply"
    mid = (msg.raw_headers("message-id") or [""])[0].strip()
    refs = " ".join((msg.raw_headers("references") or [""])[0].split() + ([mid] if mid else []))
    lines = [
        f"From: {v.from_ or me}",
        f"To: {msg.envelope_from}",
        f"Subject: {Header(subject, 'utf-8').encode() if not subject.isascii() else subject}",
        f"Date: {format_datetime(datetime.fromtimestamp(now).astimezone())}",
        f"Message-ID: {make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "Precedence: bulk",
    ]
    if mid:
        lines.append(f"In-Reply-To: {mid}")
    if refs:
        lines.append(f"References: {refs}")
    lines.append("MIME-Version: 1.0")
    if v.mime:  # the reason is a MIME entity: its own header fields and body
        body = v.reason.replace("\r\n", "\n").replace("\n", "\r\n")
        return ("\r\n".join(lines) + "\r\n" + body).encode("utf-8")
    lines += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    body = v.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + ("" if body.endswith("\r\n") else "\r\n")
            ).encode("utf-8")


async def send_vacations(app: Any, queue_id: str, msg: MessageContext,
                         vacations: list[tuple[Recipient, Vacation]]) -> list[str]:
    """Send the replies that are due; their queue ids."""
    sent: list[str] = []
    for r, v in vacations:
        try:
            qid = await _one(app, queue_id, msg, r, v)
        except Exception:
            log.failure("{queue_id}: vacation reply for <{rcpt}> failed", queue_id=queue_id,
                        rcpt=r.address)
            continue
        if qid:
            sent.append(qid)
    return sent


async def _one(app: Any, queue_id: str, msg: MessageContext, r: Recipient,
               v: Vacation) -> str | None:
    own = {a.lower() for a in await app.store.directory.addresses_of(r.account_id)}
    own.add(r.address.lower())
    own |= {a.lower() for a in v.addresses}
    reason = why_not(msg, own)
    if reason:
        log.info("{queue_id}: no vacation reply for <{rcpt}>: {why}", queue_id=queue_id,
                 rcpt=r.address, why=reason)
        return None
    if v.known_only and not await app.store.pool.do(
            lambda conn: known_sender(conn, r.account_id, own, msg.envelope_from)):
        log.info("{queue_id}: no vacation reply for <{rcpt}>: sender not known",
                 queue_id=queue_id, rcpt=r.address)
        return None
    now = time.time()
    seconds = max(v.seconds, app.cfg.sieve.vacation_min_days * 86400)
    sender = msg.envelope_from
    claimed = await app.store.pool.transaction(
        lambda conn: claim_vacation(conn, r.account_id, sender, v.handle, int(now), seconds))
    if not claimed:
        log.info("{queue_id}: vacation reply for <{rcpt}> to <{to}> already sent this period",
                 queue_id=queue_id, rcpt=r.address, to=sender)
        return None
    me = formataddr(("", r.address))
    raw = build_reply(msg, v, me, app.cfg.server.hostname, now)
    where, account = await report_destination(app.store, sender)
    if where == "unknown":
        return None
    qid = new_queue_id()
    res = await app.store.ingestor.ingest(report_request(raw, qid, sender, account))
    mail_text(queue_id, f"vacation reply of <{r.address}>: {qid}")
    maillog(qid, **{"from": "", "size": len(raw), "nrcpt": "1 (queue active)"})
    if where == "local":
        for line in local_report_logs(qid, sender, res):
            line()
    elif app.queue is not None:
        app.queue.kick()
    return qid

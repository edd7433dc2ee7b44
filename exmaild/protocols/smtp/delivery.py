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
recipient gets it and the client retries the whole message later). The
members a mail group expands to are the exception: each is judged on its own,
and a refused member is reported to the sender (queue/group_refusals.py).
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import time
from datetime import datetime
from email.utils import format_datetime, formataddr, getaddresses
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.logsetup import maillog
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.rfc822 import header_end
from exmaild.mailstore.spool import SpooledMessage
from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.replies import Reply
from exmaild.protocols.smtp.session import Session, Transaction, address_literal
from exmaild.queue.notify import HEADER_READ
from exmaild.queue.records import DELIVERED, QueuedRecipient
from exmaild.queue.store import enqueue
from exmaild.queue.success import report_local_delivery, wanting_report
from exmaild.sieve.catchall import FOLDER as CATCHALL_FOLDER
from exmaild.sieve.catchall import caught_accounts, ensure_folder, trace_prefix
from exmaild.store import flags
from exmaild.store import model as m
from exmaild.store.errors import storage_full

log = Logger(namespace="exmaild.smtp")

# A header field name at the start of a line, in the header section.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:")
_DATE = re.compile(rb"(?im)^date[ \t]*:")
_FROM = re.compile(rb"(?im)^from[ \t]*:")
_HELO_UNSAFE = re.compile(r"[^\x21-\x7e]|[();\\\"]")
# A submitted message's header section up to this size is copied to append
# missing Message-ID/Date fields at its end (see Delivery.build).
MAX_HEADER_COPY = 256 * 1024


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


def missing_headers(
    message: bytes | mmap.mmap, *, hostname: str, queue_id: str, now: float
) -> tuple[bytes, int]:
    """Message-ID and Date for a submitted message that lacks them (RFC 6409
    §8), and the offset at the end of its header section where they go.

    `message` may be a spooled message's mmap: it is searched, not copied."""
    if message[:2] == b"\r\n" or message[:1] == b"\n":
        header_stop, cut = 0, 0
    elif (end := _HEADER_END.search(message)) is not None:
        header_stop = end.start() + 1
        cut = end.start() + (2 if message[end.start()] == 13 else 1)
    else:
        header_stop = cut = len(message)
    out = b""
    if not _MESSAGE_ID.search(message, 0, header_stop):
        out += f"Message-ID: <{int(now)}.{queue_id}@{hostname}>\r\n".encode()
    if not _DATE.search(message, 0, header_stop):
        out += f"Date: {_now_text(now)}\r\n".encode()
    return out, cut


def from_rewrite(
    message: bytes | mmap.mmap, cut: int, owned: frozenset[str], name: str
) -> tuple[int, int, bytes] | None:
    """(start, end, new field) to give a submitted message's From: the
    display name of the sender's policy (manual §4.4.1.3), when From: names
    exactly one address and it is the member's own or an alias; the address
    is kept. None: leave it. Only the header section (message[:cut]) is read."""
    if not name:
        return None
    found = _FROM.search(message, 0, cut)
    if found is None:
        return None
    end = found.end()
    while True:  # the field with its folded continuation lines
        nl = message.find(b"\n", end, cut)
        if nl == -1:
            end = cut
            break
        end = nl + 1
        if end >= cut or message[end:end + 1] not in (b" ", b"\t"):
            break
    value = bytes(message[found.end():end]).decode("utf-8", "replace")
    pairs = getaddresses([value.replace("\r", "").replace("\n", "")])
    if len(pairs) != 1 or pairs[0][1].lower() not in owned:
        return None
    field = "From: " + formataddr((name, pairs[0][1]), charset="utf-8") + "\r\n"
    return found.start(), end, field.encode("ascii", "replace")


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
    """One accepted transaction's message, on its way into the store.

    Made when DATA begins: the trace fields are written then (as Postfix
    does), so the spool can hash them before the message as it arrives."""

    def __init__(self, app: Any, session: Session, txn: Transaction, *, tls: str | None,
                 auth: Any = None) -> None:
        self.app = app
        self.auth = auth  # mailauth Verdict: Authentication-Results, Junk or not
        self.session = session
        self.txn = txn
        self.tls = tls
        self.hostname = app.cfg.server.hostname
        self.group_members: set[int] = set()
        self.sieve_plan: Any = None  # exmaild.sieve.delivery.Plan, when scripts ran
        self.sent_copy: list[Target] | None = None  # the Sent copy's targets (send rules)
        self.group_externals: set[str] = set()
        self.group_targets: list[Target] = []
        return_path, received = trace_headers(
            session, txn, hostname=self.hostname, tls=tls, now=time.time()
        )
        caught = trace_prefix(txn.recipients)  # X-Original-To of a catch-all
        self.trace = caught + return_path + received
        self.body_offset = len(caught + return_path)  # the queue relays what follows it

    def spool(self) -> SpooledMessage:
        """Where the message goes while it arrives."""
        return self.app.store.ingestor.spooler.new(head=self.trace, expected=self.txn.params.size)

    def build(self, message: bytes | SpooledMessage, now: float, from_name: str = ""
              ) -> tuple[bytes, int]:
        """(head, start): the blob to store is head + message[start:]."""
        head = self.trace
        buf = message.buffer() if isinstance(message, SpooledMessage) else message
        if self.auth is not None:
            # The MX's checks: our Authentication-Results after Received:, and
            # forged ones (claiming our authserv-id) out of the header block,
            # which is copied for that; the body is not.
            cut = header_end(buf, 0, len(buf))
            if cut > MAX_HEADER_COPY:
                return head + self.auth.header, 0
            return head + self.auth.apply(bytes(buf[:cut])), cut
        if self.session.account is None:
            return head, 0
        added, cut = missing_headers(buf, hostname=self.hostname, queue_id=self.txn.queue_id,
                                     now=now)
        if cut <= MAX_HEADER_COPY:
            swap = from_rewrite(buf, cut, self.session.owned, from_name)
            if swap is not None:
                # The header section is copied with From: replaced; the body
                # (the bulk of a big message) is never copied.
                a, b, field = swap
                return head + bytes(buf[:a]) + field + bytes(buf[b:cut]) + added, cut
        if not added:
            return head, 0
        if cut > MAX_HEADER_COPY:
            # A header section this large is not copied to append to it: the
            # fields go in front of it instead (header field order is free).
            return head + added, 0
        return head + bytes(buf[:cut]) + added, cut

    def request(self, message: bytes | SpooledMessage, head: bytes, start: int) -> IngestRequest:
        s, txn = self.session, self.txn
        direct = [r.account_id for r in txn.local
                  if r.account_id is not None and not r.group and not r.catchall]
        # A mail group's members (expanded by deliver()): each mailbox once,
        # however many routes reach it; all share the one blob and content row.
        members = sorted(self.group_members - set(direct))
        auth = self.auth
        junk_ids = auth.junk_accounts if auth is not None else set()
        # A group's members follow the group's enterprise (its policy decided the group).
        member_junk = any(r.account_id in junk_ids for r in txn.local if r.group)

        def inbox_of(aid: int) -> str:
            junk = auth is not None and (auth.junk or aid in junk_ids
                                         or (aid in self.group_members and member_junk))
            return "\\Junk" if junk else "INBOX"

        plan = self.sieve_plan

        def copies(aid: int) -> list[Target]:  # recipients' Sieve (exmaild/sieve/delivery.py)
            box = inbox_of(aid)
            return [Target(aid, box)] if plan is None else plan.targets_for(aid, box)

        # A group member's copies are judged on their own (optional: outside the
        # all-or-nothing): one full mailbox never fails the rest of the group;
        # deliver() reports the refused ones to the sender.
        self.group_targets = [dataclasses.replace(t, optional=True)
                              for aid in members for t in copies(aid)]
        targets = [t for aid in direct for t in copies(aid)] + self.group_targets
        targets += [Target(aid, CATCHALL_FOLDER) for aid in caught_accounts(txn.local)]
        if plan is not None:  # copies Sieve placed for others (a local redirect)
            targets += [t for aid, ts in plan.targets.items() if aid not in direct + members
                        for t in ts]
        submitted = s.account is not None
        if submitted and s.account.setting("save_sent"):
            targets += self.sent_copy if self.sent_copy is not None else [
                Target(s.account.id, "\\Sent", flags.SEEN, optional=True)]
        extra = None
        if txn.remote or submitted or self.group_externals:
            extra = self._queue_extra(self.body_offset, record_local=submitted)
        if plan is not None and plan.redirects:
            from exmaild.sieve.smtp import with_redirects

            extra = with_redirects(extra, plan, txn.sender, self.body_offset)
        return IngestRequest(
            message, targets, check_quota=True, extra=extra, origin=None, all_or_nothing=True,
            head=head, start=start,
        )

    def _queue_extra(self, body_offset: int, *, record_local: bool) -> Any:
        txn, account = self.txn, self.session.account
        rcpts = [QueuedRecipient(r.address, notify=r.notify, orcpt=r.orcpt) for r in txn.remote]
        remote = {r.address.lower() for r in txn.remote}
        rcpts += [QueuedRecipient(a) for a in sorted(self.group_externals) if a not in remote]
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

    async def deliver(self, message: bytes | SpooledMessage) -> Reply:
        """Store the message (a spool stays the caller's to close); the reply
        for the end of DATA."""
        txn = self.txn
        now = time.time()
        if isinstance(message, SpooledMessage) and message.failed is not None:
            return R.INSUFFICIENT_STORAGE  # the spool could not be written
        try:
            groups = [r.account_id for r in txn.local if r.group and r.account_id is not None]
            if groups:
                from exmaild.directory.groups import expand_groups

                self.group_members, self.group_externals = await expand_groups(
                    self.app.store.pool, groups)
            from_name = ""
            if self.session.account is not None:
                from exmaild.directory.settings import sender_display_name

                from_name = await sender_display_name(self.app.store.pool,
                                                      self.session.account.id)
            head, start = self.build(message, now, from_name)
            from exmaild.sieve.smtp import run_scripts

            self.sieve_plan = await run_scripts(self, message, head, start)
            if self.session.account is not None and self.session.account.setting("save_sent"):
                from exmaild.sieve.smtp import send_rules

                self.sent_copy = await send_rules(self, message, head, start)
            if (refusal := self._all_rejected()) is not None:
                return refusal
            for aid in caught_accounts(txn.local):
                await ensure_folder(self.app.store, aid, CATCHALL_FOLDER)
            req = self.request(message, head, start)
            from exmaild.sieve.backup import targets as backup_targets  # manual §4.4.6.1

            req.targets = [*req.targets, *await backup_targets(self, message, head, start)]
            res = await self.app.store.ingestor.ingest(req)
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
        grouped = set(self.group_targets)
        member_refusals = [r for r in res.refused if r.target in grouped]
        if member_refusals:
            await self._report_member_refusals(member_refusals, req)
        # The parse has the Message-ID (a spooled message is not searched again).
        mid = res.parsed.message_id.strip().removeprefix("<").removesuffix(">")
        self._log(res, req.size, now, mid[:998])
        self._log_rows(res.parsed.subject, req.size, req.targets)
        if (txn.remote or self.group_externals) and self.app.queue is not None:
            self.app.queue.kick()
        if self.sieve_plan is not None:
            from exmaild.sieve.smtp import after_delivery

            after_delivery(self, req)
        if wanting_report(txn):
            # After the 250, not before it: the message is stored either way.
            # What the report returns is taken now, while the spool is open.
            original, whole = self._original(req)
            report = defer.Deferred.fromCoroutine(
                report_local_delivery(self.app, txn, original, whole=whole))
            report.addErrback(lambda f: log.failure(
                "{queue_id}: the success report could not be sent", f, queue_id=txn.queue_id))
        return R.queued(txn.queue_id)

    async def _report_member_refusals(self, refused: list[Any], req: IngestRequest) -> None:
        """Log and report (a DSN to the sender, stored before the 250) the group
        members whose mailbox refused their copy."""
        from exmaild.directory.groups import expand_groups
        from exmaild.queue.group_refusals import (
            MemberRefusal,
            log_refusals,
            report_member_refusals,
        )

        txn = self.txn
        try:
            ids = [r.target.account_id for r in refused]
            addrs = dict(await self.app.store.pool.do(lambda conn: conn.execute(
                sa.select(m.accounts.c.id, m.accounts.c.address).where(
                    m.accounts.c.id.in_(ids))).all()))
            groups = [r for r in txn.local if r.group and r.account_id is not None]
            via: dict[int, str] = {}
            for g in groups:  # which group RCPT reached each (first one wins)
                reached = (self.group_members if len(groups) == 1 else
                           (await expand_groups(self.app.store.pool, [g.account_id]))[0])
                for aid in ids:
                    if aid in reached:
                        via.setdefault(aid, g.address)
            refusals = [MemberRefusal(addrs.get(r.target.account_id, "?"),
                                      via.get(r.target.account_id, groups[0].address), r.reason)
                        for r in refused]
            log_refusals(txn.queue_id, refusals)
            original, whole = self._original(req)
            await report_member_refusals(self.app, txn, refusals, original, whole=whole)
        except Exception:
            # The other copies are stored: a 4xx now would duplicate them on retry.
            log.failure("{queue_id}: the report of refused group members could not be "
                        "stored", queue_id=txn.queue_id)

    def _all_rejected(self) -> Reply | None:
        """550 when Sieve rejects for every recipient (else rejects become DSNs)."""
        plan = self.sieve_plan
        if plan is None or not (plan.rejects or plan.blocked) or self.txn.remote \
                or self.group_externals:
            return None
        everyone = {r.account_id for r in self.txn.local if not r.group} | self.group_members
        if everyone - set(plan.rejects) - plan.blocked:
            return None
        why = next(iter(plan.rejects.values()),
                   plan.block_reason or "Sender blocked by the recipient")
        reason = " ".join(why.split())[:200] or "rejected"
        mail_line(self.txn.queue_id, f"reject: Sieve: {reason}")
        return Reply(550, "5.7.1", reason.encode("ascii", "replace").decode())

    def _original(self, req: IngestRequest) -> tuple[bytes, bool]:
        """The message as relayed (without Return-Path) for a report: whole
        if small enough to return whole, else its first HEADER_READ octets."""
        head = req.head[self.body_offset :]
        raw = req.raw.buffer() if isinstance(req.raw, SpooledMessage) else req.raw
        size = len(head) + len(raw) - req.start
        whole = size <= self.app.cfg.queue.bounce_size_limit
        want = size if whole else HEADER_READ
        return head + bytes(raw[req.start : req.start + max(0, want - len(head))]), whole

    def _refused(self, refused: list[Any]) -> Reply:
        by_id = {r.account_id: r.address for r in self.txn.local}
        first = refused[0]
        who = by_id.get(first.target.account_id, "?")
        for r in refused:
            self.app.store.metrics.deferred_local.inc()
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

    def _log(self, res: Any, size: int, now: float, message_id: str) -> None:
        # The Postfix lines ops know: smtpd's client= at the first RCPT, then
        # cleanup's message-id=, qmgr's from= and the delivery's to=; each
        # log event costs real CPU at thousands of messages a second.
        txn = self.txn
        qid = txn.queue_id
        maillog(qid, **{"message-id": message_id})
        maillog(
            qid,
            **{"from": txn.sender, "size": size, "nrcpt": f"{len(txn.recipients)} (queue active)"},
            **(self.auth.log_fields if self.auth is not None else {}),
        )
        delay = f"{now - txn.started:.2f}"
        metrics = self.app.store.metrics
        metrics.received.labels(self.session.flavour.service).inc()
        if txn.local:
            metrics.delivered_local.inc(len(txn.local))
        for r in txn.local:
            maillog(
                qid,
                to=r.address,
                relay="local",
                delay=delay,
                dsn="2.0.0",
                status="sent (delivered to mailbox)",
            )

    def _log_rows(self, subject: str, size: int, targets: Any) -> None:
        """The mail log's rows (mailstore/mail_log.py): each local copy
        delivered, or junk when every copy of it went to Junk (the MX's
        checks, a sender list, an enterprise filter or Sieve put it there);
        a group's members each; each remote copy queued."""
        from exmaild.mailstore.mail_log import writer_of

        txn = self.txn
        w = writer_of(self.app.store)
        common = {"sender": txn.sender, "subject": subject, "size": size,
                  "queue_id": txn.queue_id, "client": self.session.ip}
        placed: dict[int, set[bool]] = {}
        for t in targets:
            if t.mailbox != "\\Sent":
                placed.setdefault(t.account_id, set()).add(
                    isinstance(t.mailbox, str) and t.mailbox.lower() in ("\\junk", "junk"))

        def status(aid: int | None) -> str:
            return "junk" if aid is not None and placed.get(aid) == {True} else "delivered"

        for r in txn.local:
            if r.group:
                continue
            w.add(direction="in", recipient=r.address, account_id=r.account_id,
                  written_to=r.address, status=status(r.account_id), **common)
        groups = [r for r in txn.local if r.group]
        for aid in sorted(self.group_members):
            w.add(direction="in", account_id=aid, written_to=groups[0].address if groups
                  else "", status=status(aid), **common)
        for r in txn.remote:
            w.add(direction="out", recipient=r.address, status="queued", **common)
        for addr in self.group_externals:
            w.add(direction="out", recipient=str(addr), written_to=groups[0].address
                  if groups else "", status="queued", **common)


_mail = Logger(namespace="exmaild.maillog")


def mail_line(queue_id: str, text: str) -> None:
    """A free-form mail log line in `maillog`'s format (`NOQUEUE: reject: ...`)."""
    _mail.info("{queue_id}: {text}", queue_id=queue_id, text=text)

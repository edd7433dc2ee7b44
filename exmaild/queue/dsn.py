"""Delivery status notifications (RFC 3464 multipart/report, RFC 3461 rules).

A report has three parts: a note for people, the machine-readable
message/delivery-status, and the original message (message/rfc822) or just
its header (text/rfc822-headers). It is sent from MAILER-DAEMON with the null
envelope sender, so a report that cannot be delivered is never reported on.

Who gets one (RFC 3461 §4.1, as Postfix practises it): nobody for null-sender
mail; a recipient without NOTIFY gets failure and delay reports; NOTIFY=NEVER
gets none; otherwise exactly the listed kinds.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from email.header import Header
from email.parser import BytesHeaderParser
from email.utils import formatdate

FAILED, DELAYED, RELAYED, DELIVERED = "failed", "delayed", "relayed", "delivered"
_NOTIFY_FOR = {FAILED: "FAILURE", DELAYED: "DELAY", RELAYED: "SUCCESS", DELIVERED: "SUCCESS"}


def notify_allows(sender: str, notify: str | None, action: str) -> bool:
    """Whether the sender wants a report of this kind for this recipient."""
    if not sender:
        return False  # bounces never bounce
    if notify is None:
        return action in (FAILED, DELAYED)
    items = {x.strip().upper() for x in notify.split(",")}
    return "NEVER" not in items and _NOTIFY_FOR[action] in items


@dataclass(frozen=True)
class ReportedRecipient:
    address: str
    orcpt: str | None  # "rfc822;user@example.com"
    action: str  # FAILED | DELAYED | RELAYED
    status: str  # RFC 3463, e.g. 5.1.1
    reason: str  # one line for people (Postfix-style)
    remote_mta: str | None = None
    diagnostic: str | None = None  # "smtp; 550 5.1.1 ..."
    last_attempt: int | None = None
    retry_until: int | None = None  # delayed only


def _date(ts: float) -> str:
    return formatdate(ts, localtime=True)


def _fold(name: str, value: str, width: int = 78) -> str:
    """A header-style field folded at spaces (RFC 5322 §2.2.3); never split words."""
    line = f"{name}: "
    out: list[str] = []
    for word in value.replace("\r", " ").replace("\n", " ").split(" "):
        if not word:
            continue
        if len(line) + len(word) + 1 > width and line.strip() and not line.endswith(": "):
            out.append(line.rstrip())
            line = " "
        line += word + " "
    out.append(line.rstrip())
    return "\r\n".join(out)


def _addr_type(address: str) -> str:
    # RFC 6533: UTF-8 addresses are reported with the utf-8 address type.
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _header_block(original: bytes) -> bytes:
    """The header section of a message, ending in its empty line."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = original.find(sep)
        if end >= 0:
            return original[: end + len(sep)]
    return original if original.endswith(b"\n") else original + b"\r\n"


def original_subject(original: bytes) -> str:
    try:
        subject = BytesHeaderParser().parsebytes(_header_block(original)).get("Subject", "")
        return " ".join(str(subject).split())[:120]
    except Exception:
        return ""


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _human(hostname: str, recipients: list[ReportedRecipient], returned: str) -> str:
    failed = [r for r in recipients if r.action == FAILED]
    delayed = [r for r in recipients if r.action == DELAYED]
    relayed = [r for r in recipients if r.action == RELAYED]
    delivered = [r for r in recipients if r.action == DELIVERED]
    parts = [f"This is the mail server at {hostname}, writing about a message you sent."]
    if failed:
        parts.append(
            "It could not be delivered to the recipients below, and no further attempt\r\n"
            "will be made. The reason is given for each address; the delivery report\r\n"
            f"and {returned} are attached."
        )
        parts.append("\r\n".join(f"<{r.address}>: {r.reason}" for r in failed))
    if delayed:
        until = max(r.retry_until or 0 for r in delayed)
        parts.append(
            "It has not been delivered yet to the recipients below. Delivery will be\r\n"
            f"retried until {_date(until)}; there is no need to send it\r\n"
            "again. You will hear from us once more only if it fails for good."
        )
        parts.append("\r\n".join(f"<{r.address}>: {r.reason}" for r in delayed))
    if relayed:
        parts.append(
            "It was accepted by the mail server of the recipients below. That server does\r\n"
            "not send delivery reports itself, so this is the last you will hear from us\r\n"
            "about them."
        )
        parts.append("\r\n".join(f"<{r.address}>: {r.reason}" for r in relayed))
    if delivered:
        parts.append("It was delivered to the mailboxes of the recipients below.")
        parts.append("\r\n".join(f"<{r.address}>: {r.reason}" for r in delivered))
    return "\r\n\r\n".join(parts)


def subject_for(recipients: list[ReportedRecipient], orig_subject: str) -> str:
    actions = {r.action for r in recipients}
    if FAILED in actions:
        lead = "Undelivered mail"
    elif DELAYED in actions:
        lead = "Delayed mail (still trying)"
    elif actions == {DELIVERED}:
        lead = "Successful Mail Delivery Report"
    else:
        lead = "Delivery report"
    return f"{lead}: {orig_subject}" if orig_subject else lead


def notification_kind(recipients: list[ReportedRecipient]) -> str:
    """Postfix's log wording for the report: `sender <kind> notification: ID`."""
    actions = {r.action for r in recipients}
    if FAILED in actions:
        return "non-delivery"
    return "delay" if DELAYED in actions else "delivery status"


def build_dsn(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    envid: str | None,
    arrival: int,
    recipients: list[ReportedRecipient],
    original: bytes,
    headers_only: bool,
    now: float | None = None,
    message_id_token: str | None = None,
) -> bytes:
    """The report as bytes (CRLF lines), addressed to `sender`."""
    now = time.time() if now is None else now
    boundary = f"={queue_id}.{secrets.token_hex(8)}/{hostname}"
    original = _crlf(_header_block(original) if headers_only else original)
    eight_bit = not original.isascii()
    returned = "the header of your message" if headers_only else "your message"
    subject = subject_for(recipients, original_subject(original))
    if not subject.isascii():
        subject = Header(subject, "utf-8").encode()
    token = message_id_token or secrets.token_hex(6).upper()

    head = [
        f"Date: {_date(now)}",
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        _fold("Subject", subject),
        f"To: <{sender}>",
        f"Message-ID: <{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{token}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    status = [f"Reporting-MTA: dns; {hostname}", f"X-Exmaild-Queue-ID: {queue_id}",
              f"X-Exmaild-Sender: {_addr_type(sender)}"]
    if envid:
        status.append(f"Original-Envelope-Id: {envid}")
    status.append(f"Arrival-Date: {_date(arrival)}")
    blocks = ["\r\n".join(status)]
    for r in recipients:
        fields = [f"Final-Recipient: {_addr_type(r.address)}"]
        if r.orcpt:
            addr_type, _, addr = r.orcpt.partition(";")
            fields.append(f"Original-Recipient: {addr_type.strip()};{addr.strip()}")
        fields += [f"Action: {r.action}", f"Status: {r.status}"]
        if r.remote_mta:
            fields.append(f"Remote-MTA: dns; {r.remote_mta}")
        fields.append(_fold("Diagnostic-Code", r.diagnostic or f"X-Exmaild; {r.reason}"))
        if r.last_attempt:
            fields.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.action == DELAYED and r.retry_until:
            fields.append(f"Will-Retry-Until: {_date(r.retry_until)}")
        blocks.append("\r\n".join(fields))
    human = _human(hostname, recipients, returned)
    notice = ["Content-Description: Notification"]
    if human.isascii():
        notice.append("Content-Type: text/plain; charset=us-ascii")
    else:
        notice += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    report = ["Content-Description: Delivery report", "Content-Type: message/delivery-status"]
    returned_part = [
        f"Content-Description: Undelivered message{' header' if headers_only else ''}",
        f"Content-Type: {'text/rfc822-headers' if headers_only else 'message/rfc822'}",
    ]
    if eight_bit:
        returned_part.append("Content-Transfer-Encoding: 8bit")
    eight_bit = eight_bit or not (human.isascii() and all(b.isascii() for b in blocks))
    head.append(f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}")
    sections = [
        "\r\n".join(head),
        "This is a MIME-encapsulated delivery report.",
        f"--{boundary}\r\n" + "\r\n".join(notice),
        human,
        f"--{boundary}\r\n" + "\r\n".join(report),
        "\r\n\r\n".join(blocks),
        f"--{boundary}\r\n" + "\r\n".join(returned_part),
    ]
    text = "\r\n\r\n".join(sections) + "\r\n\r\n"
    body = original if original.endswith(b"\r\n") else original + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    return text.encode("utf-8") + body + tail

"""Outbound queue records: what the queue store returns."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

# Recipient states a member can see for mail they sent (manual §5.5.4).
QUEUED = "queued"  # not tried yet
DEFERRED = "deferred"  # remote not reachable or 4xx: retrying
SENT = "sent"  # accepted by the remote server
DELIVERED = "delivered"  # delivered to a local mailbox
BOUNCED = "bounced"  # rejected by the remote server (5xx); DSN sent
EXPIRED = "expired"  # retried until the queue lifetime ran out; DSN sent
FINAL = frozenset({SENT, DELIVERED, BOUNCED, EXPIRED})


def new_queue_id() -> str:
    """A Postfix-looking queue id: 12 upper-case hex digits, unique enough to grep."""
    return secrets.token_hex(6).upper()


@dataclass(frozen=True)
class QueuedRecipient:
    """A recipient as accepted at RCPT time, with its DSN parameters (RFC 3461)."""

    address: str
    notify: str | None = None  # "NEVER" or a comma list of SUCCESS,FAILURE,DELAY
    orcpt: str | None = None  # "rfc822;user@example.com"
    status: str = QUEUED  # DELIVERED for local recipients recorded for status display


@dataclass(frozen=True)
class RecipientStatus:
    id: int
    recipient: str
    status: str
    attempts: int
    next_attempt: int
    last_attempt: int | None
    last_reply: str | None
    relay: str | None


@dataclass(frozen=True)
class QueueEntry:
    id: int
    queue_id: str
    content_id: int | None  # None once every recipient is final (reference released)
    body_offset: int
    sender: str
    envid: str | None
    ret: str | None
    account_id: int | None
    created: int
    recipients: tuple[RecipientStatus, ...]

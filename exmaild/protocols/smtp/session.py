"""SMTP session and mail transaction state, without I/O.

A `Session` lives as long as the connection (minus what STARTTLS makes it
forget); a `Transaction` from MAIL to the end of DATA, RSET, EHLO/HELO or
STARTTLS. Listener flavours say what a port demands.
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field
from typing import Any

from exmaild.protocols.smtp.commands import MailParams, Notify, RcptParams
from exmaild.store.records import Account

# Queue ids as exmaild.queue.records.new_queue_id makes them (12 hex digits, 48
# random bits), from a generator seeded once from os.urandom: asking the
# kernel for randomness per message showed up at the top of the profile.
_ids = random.Random()
# A forked child (a pre-forking supervisor, the test suite's zygote) would
# otherwise repeat its siblings' ids: queue_messages.queue_id is unique across
# every node on one database, and the mail log is keyed by it.
os.register_at_fork(after_in_child=_ids.seed)


def new_queue_id() -> str:
    return f"{_ids.getrandbits(48):012X}"


@dataclass(frozen=True)
class Flavour:
    """What one listener offers and demands."""

    service: str  # "smtp" (MX), "submission" (587, STARTTLS), "submissions" (465)
    implicit_tls: bool = False
    offer_auth: bool = False  # AUTH is offered (over TLS, or plaintext loopback if allowed)
    require_auth: bool = False  # MAIL needs AUTH first (submission)


MX = Flavour("smtp")
SUBMISSION = Flavour("submission", offer_auth=True, require_auth=True)
SUBMISSIONS = Flavour("submissions", implicit_tls=True, offer_auth=True, require_auth=True)


@dataclass
class Recipient:
    address: str  # canonical text
    account_id: int | None  # None: remote, queued for relay
    notify: str | None = None  # RFC 3461 NOTIFY as stored by the queue
    orcpt: str | None = None  # "addr-type;address"
    group: bool = False  # a mail group: expanded into its members at delivery
    catchall: bool = False  # unknown here: to the domain's catch-all (sieve/catchall.py)

    @classmethod
    def from_params(cls, address: str, account_id: int | None, p: RcptParams) -> Recipient:
        notify = None
        if p.notify is not None:
            order = (Notify.NEVER, Notify.SUCCESS, Notify.FAILURE, Notify.DELAY)
            notify = ",".join(n.value for n in order if n in p.notify)
        orcpt = f"{p.orcpt.addr_type};{p.orcpt.address}" if p.orcpt else None
        return cls(address, account_id, notify, orcpt)


@dataclass
class Transaction:
    queue_id: str
    sender: str  # "" is the null reverse-path
    params: MailParams
    started: float
    recipients: list[Recipient] = field(default_factory=list)
    checks: Any = None  # exmaild.mailauth.inbound.InboundChecks on the MX, started at MAIL
    _seen: set[object] = field(default_factory=set)

    def add(self, rcpt: Recipient) -> bool:
        """Add a recipient; False if it reaches a mailbox (or remote address)
        already in the transaction, which then gets one copy (like Postfix's
        duplicate filter)."""
        key: object = rcpt.account_id if rcpt.account_id is not None else rcpt.address.lower()
        if rcpt.catchall:  # each unknown address is named in X-Original-To
            key = ("catchall", rcpt.address.lower())
        if key in self._seen:
            return False
        self._seen.add(key)
        self.recipients.append(rcpt)
        return True

    @property
    def local(self) -> list[Recipient]:
        return [r for r in self.recipients if r.account_id is not None]

    @property
    def remote(self) -> list[Recipient]:
        return [r for r in self.recipients if r.account_id is None]


@dataclass
class Session:
    ip: str
    flavour: Flavour
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False
    account: Account | None = None
    owned: frozenset[str] = frozenset()  # addresses the account may send as
    sasl_method: str | None = None
    txn: Transaction | None = None
    errors: int = 0
    auth_failures: int = 0
    dnsbl: Any = None  # Deferred[exmaild.spam.dnsbl.Listing], started at the first MAIL

    def __post_init__(self) -> None:
        self.tls = self.flavour.implicit_tls

    @property
    def client(self) -> str:
        """Postfix's `name[address]`; we do not look up reverse DNS."""
        return f"unknown[{self.ip}]"

    def tls_started(self) -> None:
        """RFC 3207 §4.2: forget everything learnt before the handshake."""
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.account = None
        self.owned = frozenset()
        self.sasl_method = None
        self.txn = None

    @property
    def proto(self) -> str:
        """The Received: `with` keyword (RFC 3848, RFC 6531)."""
        if not self.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if self.txn is not None and self.txn.params.smtputf8 else "ESMTP"
        return base + ("S" if self.tls else "") + ("A" if self.account is not None else "")


def address_literal(ip: str) -> str:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "[unknown]"
    return f"[IPv6:{addr.compressed}]" if addr.version == 6 else f"[{addr}]"

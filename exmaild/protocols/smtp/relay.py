"""Decide whether a parsed RCPT address is ours, without open-relay loopholes.

The parser (commands.py) has already refused what is not RFC 5321 syntax
(`user@ours@other`, `user@other,`, `< user@other >`, empty dot-strings) and
dropped source routes, so `@ours:user@other` arrives here as user@other.  What
is left are syntactically valid addresses whose local part carries an old
routing operator.  Some mailers honour those operators, so accepting
`user%other@ours` or `"user@other"@ours` as local would have us (or the next
hop) forward the mail to `other`: classic open relay.  We never route on the
local part (Postfix with allow_percent_hack=no, swap_bangpath=no), so such a
local part can only be an unknown user; we refuse it outright instead of
letting a directory lookup guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum

from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.commands import Address
from exmaild.protocols.smtp.replies import Reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RelayTrick(StrEnum):
    """A local-part feature that some mailer could route on."""

    QUOTED_AT = "quoted-at"  # "user@other"@ours
    PERCENT_HACK = "percent-hack"  # user%other@ours
    BANG_PATH = "bang-path"  # other!user@ours
    EMPTY_LOCAL_PART = "empty-local-part"  # ""@ours: some MTAs deliver it to the domain


@dataclass(frozen=True)
class RecipientClass:
    address: Address  # normalised: lower-case domain, canonical literal
    local: bool  # the domain (or IP literal) is hosted here, or bare <postmaster>
    trick: RelayTrick | None  # routing operator in the local part, if any

    @property
    def deliverable(self) -> bool:
        """Ours, and safe to look up in the directory."""
        return self.local and self.trick is None

    def refusal(self, *, relay_permitted: bool = False) -> Reply | None:
        """The reply to refuse this RCPT with, or None to go on (directory lookup
        for local addresses, the outbound queue for permitted relaying).

        A remote address is passed on unchanged, operators and all: what its own
        domain does with them is that domain's business, not a relay through us.
        """
        if self.local:
            reply = R.USER_UNKNOWN if self.trick else None
        else:
            reply = None if relay_permitted else R.RELAY_DENIED
        return reply.prefixed(f"<{self.address.text}>:") if reply else None


def relay_trick(local: str) -> RelayTrick | None:
    if not local:
        return RelayTrick.EMPTY_LOCAL_PART
    if "@" in local:  # only reachable through a quoted local part
        return RelayTrick.QUOTED_AT
    if "%" in local:
        return RelayTrick.PERCENT_HACK
    if "!" in local:
        return RelayTrick.BANG_PATH
    return None


def classify_recipient(
    addr: Address,
    local_domains: Callable[[str], bool],
    *,
    local_ips: Collection[IPAddress] = frozenset(),
) -> RecipientClass:
    """Classify a RCPT address.

    `local_domains` is asked with the lower-case ASCII (A-label) domain, without
    a trailing dot, and must answer for exactly that name: "ours.test" does not
    make "ours.test.other.com" or "sub.ours.test" ours.  UTF-8 look-alikes thus
    reach it as their own xn-- names and do not match.  An address literal is
    ours only when its IP is in `local_ips` (RFC 5321 §4.1.3 literals are rare
    and mostly abused).  The bare <postmaster> is always ours (RFC 5321 §4.5.1).
    """
    addr = addr.normalised()
    if not addr.domain:
        # Only the parser's bare <postmaster> has no domain; anything else is a caller bug.
        return RecipientClass(addr, addr.local.lower() == "postmaster", None)
    if addr.is_literal:
        ip = ipaddress.ip_address(addr.domain_ascii.strip("[]").removeprefix("IPv6:"))
        local = ip in local_ips
    else:
        local = bool(local_domains(addr.domain_ascii))
    return RecipientClass(addr, local, relay_trick(addr.local))

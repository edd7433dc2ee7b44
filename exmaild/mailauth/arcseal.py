"""ARC sealing of mail we forward (RFC 8617), with dkimpy's `arc_sign`.

A message that came in over our MX carries one Authentication-Results field
with our authserv-id (inbound.py writes it, forged ones are removed). When
such a message leaves again through the queue — a Sieve redirect, a rule's
forward, a group's outside member — the receiver can no longer check SPF
(we sent it) and may see a broken DKIM signature; the ARC set tells it what
we saw: ARC-Authentication-Results (our verdicts), ARC-Message-Signature
(over the message as sent) and ARC-Seal (over the chain), instance i=N+1
after an existing chain, cv= from the `arc=` result we recorded at receipt
(none: no chain came in). Sealed with the RSA key of the forwarding
member's domain (ARC has only rsa-sha256), once per attempt, together with
the DKIM signature, over the same stored octets.
"""

from __future__ import annotations

import dkim
import sqlalchemy as sa

from exmaild.mailauth import keys as K
from exmaild.mailauth.authresults import FIELD, authserv_id
from exmaild.mailauth.checks import QUIET
from exmaild.mailauth.headers import split_message
from exmaild.store import model as m

# RFC 8617 §4.1.3: the AMS must not sign ARC/A-R fields (dkimpy refuses
# them, and DKIM-Signature); Received and Return-Path change on the way.
_NOT_SIGNED = {b"arc-seal", b"arc-message-signature", b"arc-authentication-results",
               b"authentication-results", b"x-exmaild-impersonation", *dkim.DKIM.SHOULD_NOT}


def checked_by_us(message: bytes, our_id: str) -> bool:
    """Whether the message carries our Authentication-Results (came in over the MX)."""
    header, _ = split_message(message)
    ours = our_id.lower().rstrip(".")
    field = b""
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            field += line
            continue
        if field.split(b":", 1)[0].strip().lower() == FIELD and authserv_id(field) == ours:
            return True
        field = line
    return field.split(b":", 1)[0].strip().lower() == FIELD and authserv_id(field) == ours


def seal_domains(conn: sa.Connection, account_id: int | None, sender: str,
                 hostname: str = "") -> list[str]:
    """Who seals: the forwarding member's domain, else the envelope sender's
    (an SRS address of the forwarding domain), else the domain of our own
    host name (a group passing mail to its outside members keeps the sender)."""
    out = []
    if account_id is not None:
        addr = conn.execute(sa.select(m.accounts.c.address).where(
            m.accounts.c.id == account_id)).scalar()
        if addr and "@" in addr:
            out.append(addr.rpartition("@")[2].lower())
    if "@" in sender:
        d = sender.rpartition("@")[2].lower()
        if d not in out:
            out.append(d)
    host = hostname.lower().rstrip(".")
    for d in (host, host.partition(".")[2]):
        if d.count(".") >= 1 and d not in out:
            out.append(d)
    return out


def seal_key(conn: sa.Connection, domains: list[str]) -> tuple[str, K.DKIMKey] | None:
    for d in domains:
        for key in K.signing_keys(conn, d):
            if key.algorithm == "rsa":
                return d, key
    return None


def seal(message: bytes, key: K.DKIMKey, domain: str, our_id: str) -> bytes:
    """The ARC set (AAR, AMS, AS; CRLF-terminated) to put in front of
    `message`; b"" when dkimpy finds nothing to seal (no A-R of ours, or a
    chain it cannot continue). Blocking."""
    header, _ = split_message(message)
    names: list[bytes] = []
    for line in header.splitlines():
        if line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        n = line.split(b":", 1)[0].strip().lower()
        if n not in _NOT_SIGNED and n not in names:
            names.append(n)
    if b"from" not in names:
        return b""
    fields = dkim.arc_sign(message, key.selector.encode(), domain.encode(),
                           key.private_key.encode("ascii"), our_id.encode(),
                           include_headers=names, logger=QUIET, linesep=b"\r\n")
    return b"".join(fields)  # ARC-Seal first, as dkimpy orders them

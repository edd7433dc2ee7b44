"""DKIM signing in the outbound path (RFC 6376, RFC 8463).

The queue runner asks `Signer.signature_for` for the DKIM-Signature fields
of a batch before it starts the transaction, so SIZE= counts them; the
fields go out first, then the stored message from `body_offset` on: exactly
the octets that were signed. The keys come from the database on every
message (one indexed query): a key generated or activated while the daemon
runs signs the next message. A message is signed once per attempt and the
result kept for a short while, so its batches to several destinations share
one signature.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import dkim
from twisted.internet import threads
from twisted.logger import Logger

from exmaild.mailauth import arcseal
from exmaild.mailauth import keys as K
from exmaild.mailauth.checks import QUIET
from exmaild.mailauth.headers import domain_of, from_addresses, split_message

log = Logger(namespace="exmaild.dkim")

CACHE_SIZE = 64
CACHE_SECONDS = 60
# Signed header fields (RFC 6376 §5.4.1); From is signed twice (over-signed,
# §8.15) so a second From: cannot be added without breaking the signature.
SIGN_HEADERS = (b"from", b"from", b"to", b"cc", b"subject", b"date", b"message-id",
                b"reply-to", b"in-reply-to", b"references", b"mime-version",
                b"content-type", b"content-transfer-encoding", b"list-unsubscribe",
                b"list-unsubscribe-post")


def signing_domain(message: bytes, sender: str, hostname: str = "") -> list[str]:
    """Domains to try, best first: the From: domain (DMARC alignment), then
    the envelope sender's.

    The From: domain only when it is the envelope sender's organizational
    domain (submission checked that the member owns the sender address: a
    member of one hosted domain must not get mail signed by another's key),
    or, for the null sender (our own reports), the domain of [server] hostname.
    """
    from exmaild.mailauth.dmarc import aligned

    header, _ = split_message(message)
    out = []
    addrs = from_addresses(header)
    env = domain_of(sender) if sender and "@" in sender else ""
    if len(addrs) == 1:
        author = domain_of(addrs[0][1])
        host = hostname.lower().rstrip(".")
        if (env and aligned(author, env, strict=False)) or (
                not sender and host and (host == author or host.endswith("." + author))):
            out.append(author)
    if env and env not in out:
        out.append(env)
    return out


def sign_message(message: bytes, key_list: list[K.DKIMKey], domain: str) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated), one per key; blocking."""
    out = b""
    header, _ = split_message(message)
    present = {n.strip().lower() for n in
               (line.split(b":", 1)[0] for line in header.splitlines()
                if line[:1] not in (b" ", b"\t") and b":" in line)}
    include = [h for h in SIGN_HEADERS if h in present or h == b"from"]
    for key in key_list:
        signer = dkim.DKIM(message, logger=QUIET, linesep=b"\r\n")
        privkey = key.private_key.encode("ascii")
        out += signer.sign(key.selector.encode(), domain.encode(), privkey,
                           signature_algorithm=key.dkimpy_algorithm,
                           canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
    return out


class Signer:
    def __init__(self, store: Any, reactor: Any, hostname: str = "",
                 arc_seal: bool = False) -> None:
        self.store = store
        self.hostname = hostname
        # Only while the inbound checks run: they remove forged A-R fields
        # claiming our name, which a seal would otherwise vouch for.
        self.arc_seal = arc_seal
        self.reactor = reactor
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, bytes]] = OrderedDict()

    async def signature_for(self, content_id: int, body_offset: int, sender: str,
                            read: Any, account_id: int | None = None) -> bytes:
        """DKIM-Signature fields for the message, b"" when none of its domains has
        an active key, after an ARC set when we forward mail that came in over
        our MX (arcseal.py). `read()` returns the stored message from
        body_offset on."""
        now = time.monotonic()
        # Content ids can be reused once a content is deleted; its blob's place
        # in the append-only segments is not.
        ref = (await self.store.blob_refs([content_id])).get(content_id)
        key = (content_id, getattr(ref, "segment", None), getattr(ref, "offset", None),
               body_offset, sender, account_id)
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        message = await read()
        domains = signing_domain(message, sender, self.hostname)
        sig = b""
        for domain in domains:
            found = await self.store.pool.do(lambda c, d=domain: K.signing_keys(c, d))
            if found:
                sig = await threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), sign_message, message, found,
                    domain)
                break
        if self.arc_seal and self.hostname and arcseal.checked_by_us(message, self.hostname):
            sig = await self._seal(message, account_id, sender) + sig
        self._cache[key] = (now, sig)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return sig

    async def _seal(self, message: bytes, account_id: int | None, sender: str) -> bytes:
        def key(c: Any) -> Any:
            return arcseal.seal_key(c, arcseal.seal_domains(c, account_id, sender, self.hostname))

        found = await self.store.pool.do(key)
        if found is None:
            return b""
        domain, key = found
        try:
            fields = await threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), arcseal.seal, message, key, domain,
                self.hostname)
        except dkim.DKIMException as e:  # e.g. a cv= we cannot continue: forward unsealed
            log.warn("ARC sealing by {domain} skipped: {error}", domain=domain, error=str(e))
            return b""
        if fields:
            log.info("ARC sealed by {domain} (s={selector})", domain=domain,
                     selector=key.selector)
        return fields

"""Sender Rewriting Scheme for redirected mail (SRS0, as in libsrs2/Postfix
postsrsd): the envelope sender of a copy we forward becomes an address of
the forwarding member's domain, so SPF at the receiver checks our servers,
and a bounce to that address is relayed back to the original sender.

    SRS0=<hash>=<tt>=<domain>=<local>@<forwarding domain>

<tt> is the day (base32, mod 1024); <hash> an HMAC over tt, domain and
local part, so nobody can make us relay to an address of their choosing.
The hash and day are lower-case base32: MTAs may change the case of local
parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from pathlib import Path

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
MAX_AGE_DAYS = 21


class SRS:
    def __init__(self, secret: bytes, max_age_days: int = MAX_AGE_DAYS) -> None:
        self.secret = secret
        self.max_age = max_age_days

    def _hash(self, tt: str, domain: str, local: str) -> str:
        mac = hmac.new(self.secret, f"{tt}\0{domain.lower()}\0{local.lower()}".encode(),
                       hashlib.sha256).digest()
        return base64.b32encode(mac[:5]).decode().lower()

    def forward(self, sender: str, domain: str, now: float | None = None) -> str:
        """The rewritten envelope sender for mail from `sender` forwarded by `domain`."""
        local, _, sdomain = sender.rpartition("@")
        if not local or not sdomain:
            return sender
        day = int((time.time() if now is None else now) // 86400) % 1024
        tt = _B32[day >> 5] + _B32[day & 31]
        return f"SRS0={self._hash(tt, sdomain, local)}={tt}={sdomain}={local}@{domain}"

    def reverse(self, local_part: str, now: float | None = None) -> str | None:
        """The original sender an SRS0 local part stands for, or None when it
        is not one of ours (bad hash, too old, malformed)."""
        if not local_part[:5].upper() == "SRS0=":
            return None
        parts = local_part[5:].split("=", 3)
        if len(parts) != 4:
            return None
        h, tt, sdomain, local = parts
        tt = tt.lower()
        if len(tt) != 2 or any(c not in _B32 for c in tt) or not sdomain or not local:
            return None
        if not hmac.compare_digest(h.lower(), self._hash(tt, sdomain, local)):
            return None
        day = int((time.time() if now is None else now) // 86400) % 1024
        stamp = _B32.index(tt[0]) * 32 + _B32.index(tt[1])
        if (day - stamp) % 1024 > self.max_age:
            return None
        return f"{local}@{sdomain}"


def srs_for(cfg: object) -> SRS:
    """The SRS of this installation: [sieve] srs_secret, or a random key kept
    in <data>/srs.key (made on first use, readable by the daemon's user only)."""
    secret = getattr(cfg, "sieve").srs_secret  # noqa: B009
    if secret:
        return SRS(secret.encode())
    path = Path(getattr(cfg, "data_dir")) / "srs.key"  # noqa: B009
    try:
        return SRS(path.read_bytes())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    # Written whole under a private name, then linked into place: a process
    # racing this one (the workers of one daemon) reads all of the key or
    # finds none, never an empty file.
    tmp = path.with_name(f".srs.key.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return SRS(path.read_bytes())  # made meanwhile by another process
    finally:
        tmp.unlink(missing_ok=True)
    return SRS(key)

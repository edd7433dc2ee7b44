"""DKIM keys: generation, the DNS record to publish, and storage.

One row per (domain, selector) in `dkim_keys`. Outbound mail is signed with
the newest *active* key of each algorithm of the From: domain: RSA 2048 by
default, and Ed25519 as a second signature once such a key is active
(RFC 8463 asks for both while receivers learn Ed25519).

Rotation with two selectors: `generate --standby` makes the next key without
signing with it; publish its record and wait for the DNS TTL; `activate`
then signs with it and retires the previous key of that algorithm, whose
record stays published a few days (mail in flight and in queues is verified
later); `remove` finally drops it.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from exmaild.store import model as m

ALGORITHMS = ("rsa", "ed25519")
ACTIVE, STANDBY, RETIRED = "active", "standby", "retired"
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*")
MAX_TXT_STRING = 255  # one <character-string> of a TXT record (RFC 1035 §3.3)


@dataclass(frozen=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" | "ed25519"
    private_key: str
    public_key: str  # base64, the record's p=
    state: str
    created: int

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."

    @property
    def record_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key}"

    @property
    def dns_line(self) -> str:
        """`S._domainkey.D. IN TXT "v=DKIM1; k=..; p=.."`, split into <=255-octet strings."""
        value = self.record_value
        parts = [value[i:i + MAX_TXT_STRING] for i in range(0, len(value), MAX_TXT_STRING)]
        return f"{self.record_name} IN TXT " + " ".join(f'"{p}"' for p in parts)

    @property
    def dkimpy_algorithm(self) -> bytes:
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"


def check_selector(selector: str) -> str:
    s = selector.strip().lower()
    if not _SELECTOR.fullmatch(s) or len(s) > 63:
        raise ValueError(f"bad selector {selector!r}: letters, digits and hyphens")
    return s


def generate_keypair(algorithm: str, bits: int = 2048) -> tuple[str, str]:
    """(private key as dkimpy takes it, base64 public key for p=)."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode("ascii")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return private, base64.b64encode(public).decode("ascii")
    if algorithm == "ed25519":
        ekey = ed25519.Ed25519PrivateKey.generate()
        seed = ekey.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
        public = ekey.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        return base64.b64encode(seed).decode("ascii"), base64.b64encode(public).decode("ascii")
    raise ValueError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")


def _row(r: sa.Row) -> DKIMKey:
    return DKIMKey(r.domain, r.selector, r.algorithm, r.private_key, r.public_key, r.state,
                   r.created)


t = m.dkim_keys


def add_key(conn: sa.Connection, key: DKIMKey) -> None:
    """Store a new key; an active one retires the active key of its algorithm."""
    if key.state == ACTIVE:
        conn.execute(t.update().where(t.c.domain == key.domain, t.c.algorithm == key.algorithm,
                                      t.c.state == ACTIVE).values(state=RETIRED))
    conn.execute(t.insert().values(
        domain=key.domain, selector=key.selector, algorithm=key.algorithm,
        private_key=key.private_key, public_key=key.public_key, state=key.state,
        created=key.created))


def keys_of(conn: sa.Connection, domain: str) -> list[DKIMKey]:
    rows = conn.execute(t.select().where(t.c.domain == domain).order_by(t.c.created, t.c.id))
    return [_row(r) for r in rows]


def signing_keys(conn: sa.Connection, domain: str) -> list[DKIMKey]:
    """The newest active key of each algorithm, RSA first."""
    rows = conn.execute(t.select().where(t.c.domain == domain, t.c.state == ACTIVE)
                        .order_by(t.c.created.desc(), t.c.id.desc()))
    best: dict[str, DKIMKey] = {}
    for r in rows:
        best.setdefault(r.algorithm, _row(r))
    return [best[a] for a in ALGORITHMS if a in best]


def set_state(conn: sa.Connection, domain: str, selector: str, state: str) -> bool:
    row = conn.execute(t.select().where(t.c.domain == domain, t.c.selector == selector)).first()
    if row is None:
        return False
    if state == ACTIVE:
        conn.execute(t.update().where(t.c.domain == domain, t.c.algorithm == row.algorithm,
                                      t.c.state == ACTIVE).values(state=RETIRED))
    conn.execute(t.update().where(t.c.id == row.id).values(state=state))
    return True


def remove_key(conn: sa.Connection, domain: str, selector: str) -> bool:
    return conn.execute(
        t.delete().where(t.c.domain == domain, t.c.selector == selector)).rowcount > 0


def new_key(domain: str, selector: str, algorithm: str, standby: bool = False) -> DKIMKey:
    private, public = generate_keypair(algorithm)
    return DKIMKey(domain, selector, algorithm, private, public,
                   STANDBY if standby else ACTIVE, int(time.time()))


def parse_record(text: str) -> dict[str, str]:
    """Tags of a DKIM key record (RFC 6376 §3.6.1), whitespace removed from values."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        k, eq, v = part.partition("=")
        if eq:
            tags[k.strip()] = re.sub(r"\s+", "", v)
    return tags

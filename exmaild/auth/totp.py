"""Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits,
what every authenticator app speaks) and single-use recovery codes, the
second factor of the HTTP API logins (issue #14 item 3).

A code is accepted for the step before, at and after now (clock drift), and
only for a step later than the last one accepted for that account, so a
code seen once cannot be replayed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote

STEP = 30
DIGITS = 6
RECOVERY_CODES = 10


def new_secret() -> str:
    """160 random bits, base32 without padding (RFC 4226 §4 asks for >= 128)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def code_at(secret: str, step: int) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def matching_step(secret: str, code: str, now: float, last_step: int) -> int | None:
    """The step `code` is valid for (now ±1), if later than `last_step`."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    current = int(now // STEP)
    for step in (current - 1, current, current + 1):
        if step > last_step and hmac.compare_digest(code_at(secret, step), code):
            return step
    return None


def uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI authenticator apps read from a QR code."""
    label = quote(f"{issuer}:{account}", safe=":@")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer)}&digits={DIGITS}" \
           f"&period={STEP}"


def recovery_codes() -> list[str]:
    return [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]


def digest(code: str) -> str:
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()

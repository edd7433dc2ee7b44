"""Password hashing (argon2id) and the member password policy.

The argon2id parameters come from `[auth] argon2_*` (`configure()` at
start-up of the daemon and of exmailctl); `needs_rehash()` tells a login
that the stored hash was made with other ones (or another argon2 variant).

Policy (issue text for manual §4.3.6): 6–32 characters with an upper-case
letter, a lower-case letter and a digit; no part of the account name; not a
commonly used password.
"""

from __future__ import annotations

import re
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher(type=Type.ID)

# The most common passwords that would pass the character-class rules.
_COMMON = frozenset(
    p.lower()
    for p in (
        "Password1 Passw0rd Password123 Qwerty123 Abc123 Abc123456 Aa123456 Aa123456789 "
        "Qq123456 Admin123 Admin888 Welcome1 Welcome123 Iloveyou1 Letmein1 Qwerty1 "
        "P@ssw0rd Passw0rd! Zxcvbnm1 Asdf1234 Qwer1234 Test1234 Abcd1234 Changeme1 "
        "Summer2024 Winter2024 Spring2025 Password2025 Woaini1314 A123456 Aa111111"
    ).split()
)


class WeakPassword(ValueError):
    pass


def check_policy(password: str, address: str) -> None:
    """Raise WeakPassword with a reason an administrator can act on."""
    if not 6 <= len(password) <= 32:
        raise WeakPassword("password must be 6 to 32 characters long")
    if not re.search(r"[A-Z]", password):
        raise WeakPassword("password needs an upper-case letter")
    if not re.search(r"[a-z]", password):
        raise WeakPassword("password needs a lower-case letter")
    if not re.search(r"[0-9]", password):
        raise WeakPassword("password needs a digit")
    local = address.split("@", 1)[0].lower()
    parts = [p for p in re.split(r"[._+\-]", local) if len(p) >= 3]
    low = password.lower()
    if local and (local in low or any(p in low for p in parts)):
        raise WeakPassword("password must not contain the account name")
    if low in _COMMON:
        raise WeakPassword("password is too common")


def configure(auth: Any) -> None:
    """Hash new passwords with the parameters of an `[auth]` config section."""
    global _hasher
    _hasher = PasswordHasher(time_cost=auth.argon2_time_cost,
                             memory_cost=auth.argon2_memory_kib,
                             parallelism=auth.argon2_parallelism, type=Type.ID)


def parameters() -> dict[str, int]:
    """The current argon2id parameters (for logs and docs)."""
    return {"time_cost": _hasher.time_cost, "memory_kib": _hasher.memory_cost,
            "parallelism": _hasher.parallelism}


def needs_rehash(stored_hash: str) -> bool:
    """Whether a hash that verified was made otherwise than `hash_password`
    would make it now (other parameters, argon2i/argon2d)."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-time check; False for a missing or unreadable hash."""
    if not stored_hash:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False

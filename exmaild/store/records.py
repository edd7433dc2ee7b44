"""What store components return: plain frozen dataclasses, never rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Client settings of manual §6.2.2 and their defaults.
DEFAULT_SETTINGS: dict[str, Any] = {
    "imap_enabled": True,  # IMAP/SMTP switch
    "pop_enabled": True,  # POP/SMTP switch
    "pop_include_folders": False,  # POP sees member folders, not only INBOX
    "fetch_window": "all",  # all | 2y | 1y | 3m | 30d, for POP and IMAP
    "pop_no_delete": False,  # DELE hides the mail from POP but keeps it
    "save_sent": True,  # copy mail submitted through SMTP to Sent
    # Moving mail into Junk over IMAP blocks its sender, out of Junk unblocks
    # (manual §5.5.6 举报垃圾邮件 / 这不是垃圾邮件; exmaild/sieve/reportspam.py).
    "report_spam_blocks": True,
}
FETCH_WINDOWS = {"all": 0, "2y": 730, "1y": 365, "3m": 92, "30d": 30}

SYSTEM_FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Deleted", "\\Trash"),
    ("Junk", "\\Junk"),
)


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    created: int


@dataclass(frozen=True)
class Account:
    id: int
    address: str
    domain_id: int | None  # None: in the recycle bin, its domain removed
    kind: str
    display_name: str
    vip: bool
    enabled: bool
    quota_bytes: int
    used_bytes: int
    message_count: int
    settings: dict[str, Any] = field(hash=False, compare=False)
    password_hash: str | None = field(default=None, repr=False)
    must_change_password: bool = False

    def setting(self, name: str) -> Any:
        return self.settings.get(name, DEFAULT_SETTINGS[name])


@dataclass(frozen=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int


@dataclass(frozen=True)
class MessageEntry:
    """A message in a mailbox, with what listing commands need."""

    id: int
    mailbox_id: int
    uid: int
    content_id: int
    size: int
    flags: int
    keywords: str
    internal_date: int
    modseq: int
    pop_hidden: bool = False

"""Folder naming rules (manual §5.5, §5.5.1): system folders, their localised
aliases, nesting depth, and LIST pattern matching.

The system folders (INBOX, Drafts, Sent, Deleted, Junk) carry SPECIAL-USE
attributes and cannot be deleted or renamed. Clients that do not read
SPECIAL-USE look for (or create) a folder under a name of their own —
"已发送", "Sent Items", "Deleted Items", "垃圾邮件"... Such a name is taken as
the system folder everywhere a mailbox name is accepted, so no duplicate is
ever created and mail lands where the member expects it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from exmaild.store.records import SYSTEM_FOLDERS

SEP = "/"
MAX_LEVELS = 10  # member folders nest up to 10 levels (§5.5.1)
MAX_NAME = 900  # characters; the column holds 1000

SPECIAL_USE: dict[str, str | None] = dict(SYSTEM_FOLDERS)
XLIST_ATTRIBUTE = {
    "INBOX": "\\Inbox",
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Deleted": "\\Trash",
    "Junk": "\\Spam",
}

_ALIASES = {
    "INBOX": ["收件箱", "Inbox"],
    "Drafts": ["草稿箱", "草稿", "Draft", "Drafts"],
    "Sent": [
        "已发送", "已发送邮件", "已发邮件", "已傳送郵件", "寄件備份",
        "Sent", "Sent Items", "Sent Messages", "Sent Mail", "Sent-Mail",
    ],
    "Deleted": [
        "已删除", "已删除邮件", "已刪除郵件", "废纸篓", "回收站",
        "Deleted", "Deleted Items", "Deleted Messages", "Trash", "Bin",
    ],
    "Junk": [
        "垃圾箱", "垃圾邮件", "垃圾郵件", "广告邮件",
        "Junk", "Junk E-mail", "Junk Email", "Junk Mail", "Spam", "Bulk Mail",
    ],
}
ALIASES: dict[str, str] = {
    alias.casefold(): system for system, names in _ALIASES.items() for alias in names
}


def canonical(name: str) -> str:
    """The stored name for a client's name: a localised system-folder name
    (as the first level) becomes the system folder's."""
    first, sep, rest = name.partition(SEP)
    system = ALIASES.get(first.casefold())
    if system is None:
        return name
    return system + sep + rest


def is_system(name: str) -> bool:
    return name in SPECIAL_USE


def depth(name: str) -> int:
    return name.count(SEP) + 1


def check_new_name(name: str) -> str | None:
    """Why ``name`` (canonical) cannot be created, or None."""
    if not name or name.startswith(SEP) or name.endswith(SEP) or SEP * 2 in name:
        return "Invalid mailbox name"
    if any(c in name for c in "%*") or name.startswith("\\"):
        return "Mailbox names cannot contain % or * or start with a backslash"
    if len(name) > MAX_NAME:
        return "Mailbox name too long"
    if depth(name) > MAX_LEVELS:
        return f"Folders nest at most {MAX_LEVELS} levels deep"
    return None


def attributes(name: str, has_children: bool, *, xlist: bool = False) -> list[str]:
    attrs = ["\\HasChildren" if has_children else "\\HasNoChildren"]
    if xlist:
        if name in XLIST_ATTRIBUTE:
            attrs.append(XLIST_ATTRIBUTE[name])
    else:
        use = SPECIAL_USE.get(name)
        if use:
            attrs.append(use)
    return attrs


def children_index(names: list[str]) -> set[str]:
    """Names that have at least one child."""
    parents: set[str] = set()
    for n in names:
        while SEP in n:
            n = n.rsplit(SEP, 1)[0]
            parents.add(n)
    return parents


def matcher(reference: str, pattern: str) -> Callable[[str], bool]:
    """LIST matching (RFC 3501 §6.3.8): ``*`` matches anything, ``%`` anything
    but the hierarchy separator; INBOX matches in any case."""
    full = pattern if pattern.startswith(SEP) or not reference else reference + pattern
    rx = re.compile(
        "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in full)
        + r"\Z",
        re.DOTALL,
    )
    inbox = re.compile(
        "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in full)
        + r"\Z",
        re.DOTALL | re.IGNORECASE,
    )

    def match(name: str) -> bool:
        if rx.match(name):
            return True
        # INBOX is case-insensitive (its children are matched loosely too).
        return (name == "INBOX" or name.startswith("INBOX/")) and bool(inbox.match(name))

    return match


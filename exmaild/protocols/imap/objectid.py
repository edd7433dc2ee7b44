"""OBJECTID (RFC 8474) and CREATE-SPECIAL-USE (RFC 6154) on the protocol
side; the ids themselves are made in store/objectids.py."""

from __future__ import annotations

from exmaild.store.objectids import UseTaken, create_with_use, mailbox_size
from exmaild.store.records import Mailbox

__all__ = ["UseTaken", "creatable_use", "create_with_use", "mailbox_id", "mailbox_size"]

# The uses a CREATE may give: the system folders already hold \Drafts,
# \Sent, \Trash and \Junk (delivery and retention find them by it, so there
# is one of each), and \All / \Flagged would be virtual mailboxes, which
# exmaild does not have.
CREATABLE_USES = {"\\archive": "\\Archive"}


def mailbox_id(box: Mailbox) -> str:
    return f"F{box.id}"


def creatable_use(uses: tuple[str, ...]) -> str | None:
    """The one special use to give the new mailbox, or None: refuse [USEATTR]."""
    if len(uses) != 1:
        return None
    return CREATABLE_USES.get(uses[0].lower())

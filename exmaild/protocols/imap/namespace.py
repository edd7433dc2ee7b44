"""IMAP namespaces (RFC 2342): the member's own folders, and the business
mailboxes assigned to it (manual §4.4.2.3, §5.2).

The personal namespace has no prefix; the shared one is ``Shared/``, each
business mailbox one level below it by address::

    INBOX, Sent, Projects/2026         the member's own
    Shared/sales@example.test/INBOX    the INBOX of business mailbox sales@

`resolve` is the one place a client-visible name becomes (owner account id,
stored name): every command naming a mailbox goes through it, and the store
calls then take that owner. A business mailbox not assigned to the member (or
of another enterprise, or disabled, or in the recycle bin) resolves to None,
which commands answer with ``NO [NONEXISTENT]``: it is never revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exmaild.directory.shared import accessible_mailboxes
from exmaild.store.records import Mailbox

from . import folders

if TYPE_CHECKING:
    from .server import IMAPServer

SHARED_PREFIX = "Shared"
NAMESPACE_LINE = b'* NAMESPACE (("" "/")) NIL (("Shared/" "/"))\r\n'


@dataclass(frozen=True)
class Resolved:
    account_id: int  # the owner: the member itself, or the business mailbox
    name: str  # the stored (canonical) name in the owner's account
    shared: bool


def is_shared_name(client_name: str) -> bool:
    """Whether a name lies in the shared namespace (or is its root)."""
    return client_name.partition(folders.SEP)[0] == SHARED_PREFIX


def shown(address: str, name: str) -> str:
    return f"{SHARED_PREFIX}{folders.SEP}{address}{folders.SEP}{name}"


async def assigned(c: IMAPServer) -> dict[str, int]:
    """address -> account id of each business mailbox the member may use now."""
    pairs = await accessible_mailboxes(c.store.pool, c.session.account_id)
    return {address: sid for sid, address in pairs}


async def resolve(c: IMAPServer, client_name: str) -> Resolved | None:
    if not is_shared_name(client_name):
        return Resolved(c.session.account_id, folders.canonical(client_name), False)
    _root, _sep, rest = client_name.partition(folders.SEP)
    address, sep, folder = rest.partition(folders.SEP)
    if not sep or not folder:
        return None  # the namespace root or a mailbox's level: not selectable
    sid = (await assigned(c)).get(address.lower())
    if sid is None:
        return None
    return Resolved(sid, folders.canonical(folder), True)


async def get_mailbox(c: IMAPServer, client_name: str) -> Mailbox | None:
    """The mailbox a client-visible name stands for, or None (NONEXISTENT)."""
    res = await resolve(c, client_name)
    if res is None:
        return None
    return await c.store.mailboxes.get(res.account_id, res.name)


async def shared_listing(c: IMAPServer) -> list[tuple[str, Mailbox]]:
    """(client-visible name, mailbox) of every folder of the member's business
    mailboxes, INBOX first within each."""
    out: list[tuple[str, Mailbox]] = []
    for address, sid in sorted((await assigned(c)).items()):
        boxes = await c.store.mailboxes.list(sid)
        for b in sorted(boxes, key=lambda b: (b.name != "INBOX", b.name)):
            out.append((shown(address, b.name), b))
    return out

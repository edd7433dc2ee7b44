"""IMAP4rev2 (RFC 9051) for a session that sent ``ENABLE IMAP4rev2``.

IMAP4rev2 is advertised beside IMAP4rev1; a session that does not enable it
is served as before. What enabling changes (RFC 9051 appendix E), and where:

- no ``\\Recent`` flag and no ``* n RECENT``: the view neither claims nor
  shows it (``session.View.rev2``), so IMAP4rev1 sessions still get theirs;
- SELECT / EXAMINE: no ``[UNSEEN n]``, and a ``* LIST`` of the mailbox
  (``select_list_line``) (RFC 9051 §6.3.2);
- SEARCH answers ``* ESEARCH`` (ALL when no RETURN was given, §6.4.4);
- mailbox names are UTF-8 both ways, as with UTF8=ACCEPT, but SEARCH keeps
  its CHARSET (§6.4.4 has it);
- STATUS ``DELETED`` (served to every session, like ``SIZE``).

The rest of IMAP4rev2's base (ESEARCH, SEARCHRES, LIST-EXTENDED,
LIST-STATUS, BINARY, MOVE, UIDPLUS, NAMESPACE, UNSELECT, SPECIAL-USE, IDLE,
SASL-IR, LITERAL+ (a superset of LITERAL-), ``[CLOSED]``...) is served to
every session already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exmaild.store.records import Mailbox

from . import folders, namespace
from . import responses as r
from .encode import encode_mailbox

if TYPE_CHECKING:
    from .server import IMAPServer


def enable(c: IMAPServer) -> None:
    s = c.session
    s.rev2 = True
    s.utf8 = True  # RFC 9051 §5.1: mailbox names are UTF-8
    if s.selected is not None:
        s.selected.view.start_rev2()


async def select_list_line(c: IMAPServer, client_name: str, box: Mailbox) -> bytes:
    """``* LIST (attributes) "/" name`` of the mailbox just selected: the name
    as LIST shows it, with OLDNAME when the client named it otherwise (a
    localised alias of a system folder, say)."""
    res = await namespace.resolve(c, client_name)
    owner = res.account_id if res is not None else c.session.account_id
    names = [b.name for b in await c.store.mailboxes.list(owner)]
    prefix = box.name + folders.SEP
    has_children = any(n.startswith(prefix) for n in names)
    attrs = folders.attributes(box.name, has_children)
    if box.special_use and box.special_use not in attrs:
        attrs.append(box.special_use)
    shown = box.name
    if res is not None and res.shared:
        address = client_name.split(folders.SEP, 2)[1]
        shown = namespace.shown(address.lower(), box.name)
    extra = b""
    if client_name != shown and not (shown == "INBOX" and client_name.upper() == "INBOX"):
        extra = b' ("OLDNAME" (' + encode_mailbox(client_name, utf8=True) + b"))"
    return r.list_line("LIST", attrs, shown, extra, utf8=True)

"""CATENATE (RFC 4469): an APPEND whose message is put together from TEXT
literals and parts of messages already stored, named by IMAP URLs (RFC
5092) relative to this server: ``/mailbox[;UIDVALIDITY=n]/;UID=n
[/;SECTION=s][/;PARTIAL=o[.l]]``. A URL that does not name a message this
account can read gets ``NO [BADURL url]``; the result is then stored like
any APPEND (cmd_append.py, cmd_multiappend.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from exmaild.store.blobs import BlobRef
from exmaild.store.imapmessages import FetchColumns, fetch_rows

from . import fetch_sections as fs
from . import responses as r
from .commands import AppendArgs, AppendMessage, CatPart
from .errors import ParseError
from .fetch import parse_fetch_items
from .namespace import get_mailbox
from .tokens import Reader, decode_mailbox

if TYPE_CHECKING:
    from .server import IMAPServer

_URL = re.compile(
    r"/(?P<mbox>[^;?#]+?)(?:;UIDVALIDITY=(?P<uv>[0-9]{1,10}))?/;UID=(?P<uid>[0-9]{1,10})"
    r"(?:/;SECTION=(?P<sec>[^/;?#]*))?(?:/;PARTIAL=(?P<po>[0-9]{1,10})(?:\.(?P<pl>[0-9]{1,10}))?)?\Z",
    re.IGNORECASE,
)


async def build(c: IMAPServer, args: AppendArgs) -> AppendArgs | r.Result:
    """``args`` with every CATENATE message put together, or the refusal."""
    first = AppendMessage(args.flags, args.internal_date, args.message, args.catenate)
    messages = [first, *args.more]
    if not any(m.catenate for m in messages):
        return args
    done: list[AppendMessage] = []
    for msg in messages:
        if msg.catenate:
            data = await _catenate(c, msg.catenate)
            if isinstance(data, r.Result):
                return data
            msg = AppendMessage(msg.flags, msg.internal_date, data)
        done.append(msg)
    head, *rest = done
    return AppendArgs(args.mailbox, head.flags, head.internal_date, head.message, tuple(rest))


async def _catenate(c: IMAPServer, parts: tuple[CatPart, ...]) -> bytes | r.Result:
    limit = c.cfg.limits.message_size
    out: list[bytes] = []
    total = 0
    for part in parts:
        if part.text is not None:
            data = part.text
        else:
            assert part.url is not None
            got = await _url_data(c, part.url)
            if got is None:
                shown = part.url[:200].replace("]", "%5D")
                return r.no("The URL does not name a message part here", f"BADURL {shown}")
            data = got
        total += len(data)
        if total > limit:
            return r.no(f"The message would be larger than {limit} bytes", "TOOBIG")
        out.append(data)
    return b"".join(out)


async def _url_data(c: IMAPServer, url: str) -> bytes | None:
    m = _URL.match(url)
    if m is None:
        return None
    try:
        name = decode_mailbox(unquote_to_bytes(m["mbox"]))
        item = None
        if m["sec"]:
            section = unquote_to_bytes(m["sec"])
            item = parse_fetch_items(Reader((b"BODY[" + section + b"]",)))[0]
    except (ParseError, ValueError):
        return None
    box = await get_mailbox(c, name)
    if box is None or (m["uv"] and int(m["uv"]) != box.uidvalidity):
        return None
    uid, mid = int(m["uid"]), box.id
    blobs = c.store.blobs

    def read(conn):  # type: ignore[no-untyped-def]
        row = fetch_rows(conn, mid, [uid], FetchColumns(blob=True)).get(uid)
        if row is None:
            return None
        return blobs.read(BlobRef(row[2], row[3], row[4]))

    raw = await c.store.pool.do(read)
    if raw is None:
        return None
    if item is not None:
        assert item.section is not None
        raw = fs.section_bytes(raw, item.section)
        if raw is None:
            return None
    if m["po"]:
        origin = int(m["po"])
        length = int(m["pl"]) if m["pl"] else len(raw)
        raw = raw[origin : origin + length]
    return raw

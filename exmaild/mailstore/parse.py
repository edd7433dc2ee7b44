"""One-shot message parsing at ingest.

``parse_message`` computes everything IMAP FETCH/SEARCH and POP3 need so that a
stored message is never parsed again: exact IMAP ENVELOPE / BODY /
BODYSTRUCTURE bytes plus decoded text for searching. It is pure (no I/O) and
total: malformed input yields a best-effort result, never an exception.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import parsedate_tz

from exmaild.mailstore import rfc822
from exmaild.mailstore.imapstr import imap_quote
from exmaild.mailstore.mime_struct import (
    MESSAGE,
    MULTIPART,
    Part,
    parse_tree,
    render,
    render_envelope,
)
from exmaild.mailstore.rfc822 import MISSING_DOMAIN, MISSING_MAILBOX, Address, Field
from exmaild.mailstore.textdecode import (
    decode_body,
    decode_bytes,
    decode_header,
    decode_rfc2231,
    html_to_text,
)

__all__ = ["ParsedMessage", "imap_quote", "parse_message"]

log = logging.getLogger(__name__)

# Raw bytes per excerpt character worth decoding: base64 (4/3) of 4-byte UTF-8
# with line breaks, or quoted-printable (3 per byte) of 3-byte CJK.
_RAW_PER_CHAR = 12


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    size: int
    header_len: int  # raw[:header_len] is BODY[HEADER], raw[header_len:] BODY[TEXT]
    envelope: bytes  # IMAP ENVELOPE list, parens included
    bodystructure: bytes  # extended BODYSTRUCTURE, parens included
    body: bytes  # non-extensible BODY form
    subject: str
    from_: str
    to: str
    cc: str
    bcc: str
    reply_to: str
    message_id: str
    in_reply_to: str
    references: str
    sent_date: datetime | None  # UTC
    headers_text: str
    attachment_names: tuple[str, ...]
    excerpt: str
    has_attachments: bool
    # The Date: header's calendar day in its own zone (days since 1970-01-01),
    # what SENTON/SENTBEFORE/SENTSINCE compare (RFC 3501 §6.4.4).
    sent_day: int | None = None


def parse_message(
    raw: bytes | mmap.mmap, *, excerpt_chars: int = 16384, head: bytes = b"", start: int = 0
) -> ParsedMessage:
    """Parse ``raw`` (as received, CRLF line ends; bare LF tolerated).

    ``raw`` may be a read-only mmap of a spooled message: it is not copied.
    With ``head`` and ``start`` the message parsed is ``head + raw[start:]``,
    without joining them: ``head`` is header lines stored in front of the
    received message (Received:, ...). Whole lines, ending in LF, with no empty
    line; anything else is joined first (a copy, but still the right result).
    """
    if not isinstance(raw, bytes | mmap.mmap):
        raw = bytes(raw)
    if head and not _whole_lines(head):
        raw, head, start = head + raw[start:], b"", 0
    try:
        return _parse(raw, max(0, excerpt_chars), head, start)
    except Exception:  # last resort: a message must never be refused for its content
        log.warning("parse_message fell back to a plain-text view", exc_info=True)
        return _fallback(raw, head, start)


def _whole_lines(head: bytes) -> bool:
    """Header lines that cannot end the header: LF-terminated, none empty."""
    return (
        head.endswith(b"\n") and not head.startswith((b"\n", b"\r\n"))
        and b"\n\n" not in head and b"\n\r\n" not in head
    )


def _parse(raw: bytes, excerpt_chars: int, head: bytes = b"", start: int = 0) -> ParsedMessage:
    root = parse_tree(raw, head=head, start=start)
    envelope, addrs = render_envelope(root.fields)
    bodystructure, body = render(raw, root)
    names, has_attachments = _attachments(root)
    get = root.fields.get
    sent_date, sent_day = parse_date(get(b"date"))
    return ParsedMessage(
        size=len(head) + len(raw) - start,
        header_len=len(head) + root.body_start - start,
        envelope=b"(" + envelope + b")",
        bodystructure=bodystructure,
        body=body,
        subject=_clean(" ".join(decode_header(get(b"subject", b"")).split())),
        from_=_format_addresses(addrs[b"from"]),
        to=_format_addresses(addrs[b"to"]),
        cc=_format_addresses(addrs[b"cc"]),
        bcc=_format_addresses(addrs[b"bcc"]),
        reply_to=_format_addresses(addrs[b"reply-to"]),
        message_id=_plain_header(get(b"message-id")),
        in_reply_to=_plain_header(get(b"in-reply-to")),
        references=_plain_header(get(b"references")),
        sent_date=sent_date,
        headers_text=_clean(_headers_text(root.field_list)),
        attachment_names=names,
        excerpt=_clean(_excerpt(raw, root, excerpt_chars)),
        has_attachments=has_attachments,
        sent_day=sent_day,
    )


def _fallback(raw: bytes, head: bytes = b"", start: int = 0) -> ParsedMessage:
    """Minimal, obviously safe result: the whole body as one text/plain part."""
    body_start = rfc822.header_end(raw, start, len(raw))
    size = len(raw) - body_start
    lines = rfc822.count(raw, b"\n", body_start)
    basic = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d' % (size, lines)
    return ParsedMessage(
        size=len(head) + len(raw) - start,
        header_len=len(head) + body_start - start,
        envelope=b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
        bodystructure=basic + b" NIL NIL NIL NIL)",
        body=basic + b")",
        subject="",
        from_="",
        to="",
        cc="",
        bcc="",
        reply_to="",
        message_id="",
        in_reply_to="",
        references="",
        sent_date=None,
        headers_text="",
        attachment_names=(),
        excerpt="",
        has_attachments=False,
    )


def _clean(s: str) -> str:
    """Drop NUL, which databases (PostgreSQL text) refuse to store."""
    return s.replace("\x00", "") if "\x00" in s else s


def _headers_text(fields: list[Field]) -> str:
    """The header block as "Name: decoded value" lines, for HEADER searches.

    The common all-ASCII block without encoded-words is decoded in one go.
    """
    joined = b"\n".join([name + b": " + value for name, value in fields])
    if joined.isascii() and b"=?" not in joined:
        text = joined.decode("ascii")
    else:
        text = "\n".join(f"{n.decode('latin-1')}: {decode_header(v)}" for n, v in fields)
    if "\t" in text or "  " in text:  # runs left by unfolding hurt phrase search
        text = "\n".join([" ".join(line.split()) for line in text.split("\n")])
    return text


def _plain_header(value: bytes | None) -> str:
    return "" if value is None else _clean(" ".join(decode_bytes(value).split()))


def _format_addresses(addrs: list[Address]) -> str:
    """Decoded "Name <addr>, ..." text; groups read "Group: members;"."""
    if not addrs:
        return ""
    items: list[str] = []
    group: list[str] | None = None
    group_name = ""
    for name, _route, mailbox, host in addrs:
        if host is None:
            if mailbox is not None:  # group start
                group, group_name = [], decode_header(mailbox)
            elif group is not None:  # group end
                items.append(_group_text(group_name, group))
                group = None
            continue
        spec = b"" if mailbox == MISSING_MAILBOX else mailbox or b""
        if host != MISSING_DOMAIN and spec:
            spec += b"@" + host
        addr = decode_bytes(spec)
        text = " ".join(decode_header(name).split()) if name is not None else ""
        text = f"{text} <{addr}>" if text and addr else text or addr
        if text:
            (items if group is None else group).append(text)
    if group is not None:
        items.append(_group_text(group_name, group))
    return _clean(", ".join(items))


def _group_text(name: str, members: list[str]) -> str:
    return f"{name}: {', '.join(members)};" if members else f"{name}:;"


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def parse_date(value: bytes | str | None) -> tuple[datetime | None, int | None]:
    """A Date: header's instant (UTC) and its calendar day as written, in
    its own zone (days since 1970-01-01); a missing zone counts as UTC."""
    if not value:
        return None, None
    try:
        t = parsedate_tz(value.decode("latin-1") if isinstance(value, bytes) else value)
        if t is None:
            return None, None
        tz = timezone(timedelta(seconds=t[9] or 0))
        local = datetime(*t[:6], tzinfo=tz)
        return local.astimezone(UTC), local.toordinal() - _EPOCH_ORDINAL
    except (ValueError, OverflowError, TypeError, IndexError):
        return None, None


# --- attachments and excerpt -------------------------------------------------
def _filename(part: Part) -> str | None:
    disp = part.disposition
    for params in (disp[1] if disp else [], part.params):
        for key in (b"filename", b"name"):
            for k, v in params:
                lk = k.lower()
                if lk == key + b"*":
                    return decode_rfc2231(v)
                if lk == key:
                    return decode_header(v)
    return None


def _attachments(root: Part) -> tuple[tuple[str, ...], bool]:
    """Names of attachment parts, and whether there is any attachment.

    An attachment is a non-multipart part that is not the readable body:
    disposition "attachment", an attached message/rfc822, or a named part
    other than an inline resource of a multipart/related.
    """
    names: list[str] = []
    found = False
    stack = [root]
    while stack:
        part = stack.pop()
        if part.kind == MULTIPART:
            stack.extend(reversed(part.children))
            continue
        attached_message = part.kind == MESSAGE and part is not root
        if part.kind == MESSAGE:
            stack.append(part.children[0])
        disp = part.disposition
        is_attachment_disp = disp is not None and disp[0].lower() == b"attachment"
        name = _filename(part)
        related = part.parent_subtype == b"related" and not is_attachment_disp
        if is_attachment_disp or attached_message or (name and not related):
            found = True
            if name:
                names.append(_clean(" ".join(name.split())))
    return tuple(names), found


def _prefers(part: Part, subtype: bytes) -> bool:
    """Whether ``part`` is, or is a multipart containing, text/<subtype>."""
    if part.kind == MULTIPART:
        return any(_prefers(c, subtype) for c in part.children)
    return part.is_text and part.subtype.lower() == subtype


def _text_parts(part: Part, out: list[Part]) -> None:
    """Readable text parts; in an alternative only the plain (else HTML) one."""
    if part.kind == MESSAGE:
        _text_parts(part.children[0], out)
    elif part.kind == MULTIPART:
        children = part.children
        if part.subtype.lower() == b"alternative":
            best = next((c for c in children if _prefers(c, b"plain")), None)
            best = best or next((c for c in children if _prefers(c, b"html")), children[-1])
            children = [best]
        for child in children:
            _text_parts(child, out)
    elif part.is_text and part.subtype.lower() in (b"plain", b"html"):
        out.append(part)


def _excerpt(raw: bytes, root: Part, limit: int) -> str:
    parts: list[Part] = []
    _text_parts(root, parts)
    texts: list[str] = []
    total = 0
    for part in parts:
        if total >= limit:
            break
        data = raw[part.body_start : min(part.end, part.body_start + limit * _RAW_PER_CHAR + 64)]
        charset = rfc822.get_param(part.params, b"charset")
        text = decode_body(data, part.cte(), charset.decode("latin-1") if charset else None)
        if part.subtype.lower() == b"html":
            text = html_to_text(text)
        text = text.replace("\r\n", "\n").strip()
        if text:
            texts.append(text)
            total += len(text) + 1
    return "\n".join(texts)[:limit]

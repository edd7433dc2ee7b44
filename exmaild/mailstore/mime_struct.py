"""MIME part tree located by boundary scanning in the raw bytes, and the IMAP
BODY / BODYSTRUCTURE / ENVELOPE renderings of it (RFC 3501 §7.4.2).

Offsets come straight from the raw message so octet sizes and line counts are
exact. Output follows Dovecot 2.3 byte for byte on well-formed input: types,
parameters and encodings keep the case they were sent in, defaults are
"text" "plain" ("charset" "us-ascii") and "7bit".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from exmaild.mailstore import rfc822
from exmaild.mailstore.imapstr import human, imap_quote
from exmaild.mailstore.rfc822 import Address, Field, Param

MAX_DEPTH = 64  # deeper nesting is shown as an opaque text/plain leaf
MAX_PARTS = 5000  # so is everything after this many parts
# Header octets per part whose fields are parsed (Postfix keeps 100 KiB): a
# message with no empty line is all header, and parsing 45 MB of it would
# copy it and make a tuple per line. The stored bytes are not affected.
MAX_HEADER_PARSE = 256 * 1024

LEAF, MULTIPART, MESSAGE = 0, 1, 2


@dataclass(slots=True)
class Part:
    start: int  # first header byte
    body_start: int
    end: int  # one past the last body byte
    field_list: list[Field]  # header fields in order
    fields: dict[bytes, bytes]  # lower-cased name -> first value
    mtype: bytes
    subtype: bytes
    params: list[Param]
    kind: int = LEAF
    # MULTIPART: the body parts; MESSAGE: the encapsulated message's root.
    children: list[Part] = field(default_factory=list)
    parent_subtype: bytes = b""  # lower-cased subtype of the enclosing multipart
    disposition: tuple[bytes, list[Param]] | None = None  # (type, params)

    @property
    def is_text(self) -> bool:
        return self.kind == LEAF and self.mtype.lower() == b"text"

    def cte(self) -> bytes:
        value = self.fields.get(b"content-transfer-encoding")
        return (rfc822.first_token(value) if value is not None else None) or b"7bit"


class _Budget:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts = 0


def parse_tree(raw: bytes, *, head: bytes = b"", start: int = 0) -> Part:
    """Parse the whole message; never raises on malformed MIME.

    The message is ``head + raw[start:]``, where ``head`` is empty or whole
    header lines (ending in LF, no empty line): fields stored in front of a
    message that is not copied to join them. Offsets are those in ``raw``.
    """
    return _parse_part(raw, start, len(raw), 0, b"", _Budget(), head)


def _parse_part(
    raw: bytes, start: int, end: int, depth: int, parent_sub: bytes, budget: _Budget,
    head: bytes = b"",
) -> Part:
    budget.parts += 1
    # With a head ending in LF, the empty line that ends the header is found
    # in raw exactly where it is found in head + raw (see header_end).
    body_start = rfc822.header_end(raw, start, end)
    stop = body_start
    if stop - start > MAX_HEADER_PARSE:  # fields beyond are not looked at
        stop = raw.rfind(b"\n", start, start + MAX_HEADER_PARSE) + 1 or start + MAX_HEADER_PARSE
    field_list = rfc822.parse_fields(head + raw[start:stop])
    fields = rfc822.first_fields(field_list)
    ctype = fields.get(b"content-type")
    mtype, subtype, params = (
        rfc822.parse_content_type(ctype) if ctype is not None else (b"", b"", [])
    )
    if not mtype or not subtype:
        # RFC 2045 §5.2: missing or invalid means the default type.
        mtype, subtype = (b"message", b"rfc822") if parent_sub == b"digest" else (b"text", b"plain")
    part = Part(start, body_start, end, field_list, fields, mtype, subtype, params)
    part.parent_subtype = parent_sub
    if (disposition := fields.get(b"content-disposition")) is not None:
        part.disposition = rfc822.parse_disposition(disposition)
    ltype, lsub = mtype.lower(), subtype.lower()
    nestable = depth < MAX_DEPTH and budget.parts < MAX_PARTS
    if ltype == b"multipart":
        boundary = rfc822.get_param(params, b"boundary")
        limit = MAX_PARTS - budget.parts
        spans = _split(raw, body_start, end, boundary, limit) if boundary and nestable else None
        if spans:
            part.kind = MULTIPART
            part.children = [_parse_part(raw, s, e, depth + 1, lsub, budget) for s, e in spans]
        else:  # no usable boundary: show the body as plain text rather than lose it
            part.mtype, part.subtype, part.params = b"text", b"plain", []
    elif ltype == b"message" and lsub == b"rfc822":
        if nestable:
            part.kind = MESSAGE
            part.children = [_parse_part(raw, body_start, end, depth + 1, b"", budget)]
        else:
            part.mtype, part.subtype, part.params = b"text", b"plain", []
    return part


_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")  # what bytes.strip() removes


def _split(raw: bytes, start: int, end: int, boundary: bytes, limit: int) -> list[tuple[int, int]]:
    """(start, end) of each body part between boundary delimiter lines.

    A delimiter must start a line and be followed only by whitespace or "--"
    (stricter than Dovecot's prefix match, so an outer boundary that is a
    prefix of an inner one cannot split the inner multipart). The CRLF before
    a delimiter belongs to the delimiter (RFC 2046 §5.1.1). Past ``limit``
    parts the rest of the body becomes the last part.
    """
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start = -1  # -1 while in the preamble
    pos = start
    while (i := raw.find(delim, pos, end)) >= 0:
        pos = i + len(delim)
        if i != start and raw[i - 1] != 10:
            continue
        eol = raw.find(b"\n", pos, end)
        eol = end if eol < 0 else eol + 1
        close = rfc822.startswith(raw, b"--", pos, eol)
        if not close and _BLANK.match(raw, pos, eol).end() != eol:  # type: ignore[union-attr]
            continue
        if part_start >= 0:
            spans.append((part_start, _content_end(raw, part_start, i)))
        if close:
            return spans
        part_start = pos = eol
        if len(spans) >= limit - 1:
            break
    if part_start >= 0:
        spans.append((part_start, end))  # unterminated: runs to the end of its parent
    return spans


def _content_end(raw: bytes, part_start: int, delim_pos: int) -> int:
    e = delim_pos
    if e > part_start and raw[e - 1] == 10:
        e -= 1
        if e > part_start and raw[e - 1] == 13:
            e -= 1
    return e


# --- rendering ----------------------------------------------------------------
def _params(params: list[Param], text: bool) -> bytes:
    if not params and not text:
        return b"NIL"
    items = [imap_quote(k) + b" " + imap_quote(v) for k, v in params]
    if text and all(k.lower() != b"charset" for k, _ in params):
        items.append(b'"charset" "us-ascii"')
    return b"(" + b" ".join(items) + b")"


def _nstring(part: Part, name: bytes) -> bytes:
    return imap_quote(part.fields.get(name))


def _extension(part: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc"""
    disp = part.disposition
    dsp = (
        b"(" + imap_quote(disp[0]) + b" " + _params(disp[1], False) + b")"
        if disp is not None
        else b"NIL"
    )
    lang_value = part.fields.get(b"content-language")
    langs = rfc822.language_list(lang_value) if lang_value is not None else []
    lang = b"(" + b" ".join(map(imap_quote, langs)) + b")" if langs else b"NIL"
    return dsp + b" " + lang + b" " + _nstring(part, b"content-location")


def render(raw: bytes, part: Part) -> tuple[bytes, bytes]:
    """(BODYSTRUCTURE, BODY) of ``part``, built in one walk."""
    if _is_plain_7bit(part):
        # Dovecot answers these from a cache flag, in canonical lower case.
        basic = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d' % (
            part.end - part.body_start,
            rfc822.count(raw, b"\n", part.body_start, part.end),
        )
        return basic + b" NIL NIL NIL NIL)", basic + b")"
    structure: list[bytes] = []
    body: list[bytes] = []
    _render(raw, part, structure, body)
    return b"".join(structure), b"".join(body)


def _is_plain_7bit(part: Part) -> bool:
    """Single text/plain part, us-ascii, 7bit, no other MIME fields."""
    if not part.is_text or part.subtype.lower() != b"plain":
        return False
    if part.params and (
        len(part.params) != 1
        or part.params[0][0].lower() != b"charset"
        or part.params[0][1].lower() != b"us-ascii"
    ):
        return False
    if part.cte().lower() != b"7bit":
        return False
    return not any(
        name in part.fields
        for name in (
            b"content-id",
            b"content-description",
            b"content-md5",
            b"content-disposition",
            b"content-language",
            b"content-location",
        )
    )


def _render(raw: bytes, part: Part, ext: list[bytes], basic: list[bytes]) -> None:
    """Append the extended form to ``ext`` and the BODY form to ``basic``."""
    if part.kind == MULTIPART:
        ext.append(b"(")
        basic.append(b"(")
        for child in part.children:
            _render(raw, child, ext, basic)
        subtype = b" " + imap_quote(part.subtype)
        basic.append(subtype + b")")
        ext.append(subtype + b" " + _params(part.params, False) + b" " + _extension(part) + b")")
        return
    text = part.is_text
    if part.kind == MESSAGE:
        head = b'("message" "rfc822"'
    else:
        head = b"(" + imap_quote(part.mtype) + b" " + imap_quote(part.subtype)
    common = b"%b %b %b %b %b %d" % (
        head,
        _params(part.params, text),
        _nstring(part, b"content-id"),
        _nstring(part, b"content-description"),
        imap_quote(part.cte()),
        part.end - part.body_start,
    )
    ext.append(common)
    basic.append(common)
    if text:
        lines = b" %d" % rfc822.count(raw, b"\n", part.body_start, part.end)
        ext.append(lines)
        basic.append(lines)
    elif part.kind == MESSAGE:
        inner = part.children[0]
        envelope = b" (" + render_envelope(inner.fields)[0] + b") "
        ext.append(envelope)
        basic.append(envelope)
        _render(raw, inner, ext, basic)
        lines = b" %d" % rfc822.count(raw, b"\n", part.body_start, part.end)
        ext.append(lines)
        basic.append(lines)
    ext.append(b" " + _nstring(part, b"content-md5") + b" " + _extension(part) + b")")
    basic.append(b")")


def _addresses(addrs: list[Address]) -> bytes:
    if not addrs:
        return b"NIL"
    items = [
        b"(%b %b %b %b)"
        % (
            imap_quote(human(name) if name is not None else None),
            imap_quote(route),
            imap_quote(mailbox),
            imap_quote(host),
        )
        for name, route, mailbox, host in addrs
    ]
    return b"(" + b"".join(items) + b")"


ENVELOPE_ADDRESS_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")


def render_envelope(fields: dict[bytes, bytes]) -> tuple[bytes, dict[bytes, list[Address]]]:
    """ENVELOPE contents (without the outer parens) and the parsed address lists."""
    addrs = {
        name: rfc822.parse_addresses(fields[name]) if name in fields else []
        for name in ENVELOPE_ADDRESS_FIELDS
    }
    date = fields.get(b"date") or None  # Dovecot sends NIL for an empty Date:
    subject = fields.get(b"subject")
    from_ = _addresses(addrs[b"from"])
    parts = [
        imap_quote(date),
        imap_quote(human(subject) if subject is not None else None),
        from_,
        _addresses(addrs[b"sender"]) if addrs[b"sender"] else from_,  # RFC 3501: default
        _addresses(addrs[b"reply-to"]) if addrs[b"reply-to"] else from_,  # to From
        _addresses(addrs[b"to"]),
        _addresses(addrs[b"cc"]),
        _addresses(addrs[b"bcc"]),
        imap_quote(fields.get(b"in-reply-to")),
        imap_quote(fields.get(b"message-id")),
    ]
    return b" ".join(parts), addrs

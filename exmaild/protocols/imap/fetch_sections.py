"""BODY[section] data (RFC 3501 §6.4.5) located in the raw message.

Sections over the whole message (``[]``, ``[HEADER]``, ``[TEXT]``) are plain
byte ranges of the blob — ``header_len`` is cached at ingest — so they are
read straight from the segment, partials included. Everything else
(``[1.2]``, ``[2.MIME]``, ``[HEADER.FIELDS (...)]``, ``[3.HEADER]``) walks
the MIME tree of mailstore/mime_struct.py over the full message.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from exmaild.mailstore.mime_struct import LEAF, MESSAGE, MULTIPART, Part, parse_tree

from .fetch import FetchItem, Section

# One header field with its continuation lines and line ending, verbatim.
_RAW_FIELD = re.compile(rb"([^ \t\r\n:]+)[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z)")


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of the message (end None: to the end)."""

    start: int
    end: int | None


WHOLE = "whole"  # Range of the blob
PARSED = "parsed"  # needs the MIME tree


def kind(item: FetchItem) -> str | None:
    """How a body item is served: WHOLE, PARSED, or None (not a body item)."""
    if item.section is None:
        return WHOLE if item.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT") else None
    sec = item.section
    if item.name != "BODY":
        return PARSED  # BINARY[...] / BINARY.SIZE[...]: decoded from the tree
    if not sec.part and sec.text in ("", "HEADER", "TEXT"):
        return WHOLE
    return PARSED


_RFC822_TEXT = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}


def whole_range(item: FetchItem, header_len: int, size: int) -> Range:
    """The blob range of a WHOLE item, partial applied."""
    text = item.section.text if item.section is not None else _RFC822_TEXT[item.name]
    if text == "HEADER":
        start, end = 0, min(header_len, size)
    elif text == "TEXT":
        start, end = min(header_len, size), size
    else:
        start, end = 0, size
    if item.partial is not None:
        origin, length = item.partial
        start, end = min(start + origin, end), min(start + origin + length, end)
    return Range(start, end)


def header_fields(block: bytes, names: Sequence[str], exclude: bool) -> bytes:
    """The fields of a header block named (or, with ``exclude``, not named)
    in ``names``, verbatim, and the blank line that ends a header."""
    wanted = {n.lower().encode("ascii") for n in names}
    out = []
    for m in _RAW_FIELD.finditer(block):
        if (m.group(1).lower() in wanted) != exclude:
            field = m.group(0)
            if not field.endswith(b"\n"):
                field += b"\r\n"
            out.append(field)
    out.append(b"\r\n")
    return b"".join(out)


def find_part(root: Part, numbers: Sequence[int]) -> Part | None:
    """The body part ``1.2.3`` names, or None.

    A number picks a part of the current message's body: the n-th child of a
    multipart body, or (1 only) the body of a single-part message. A
    message/rfc822 part picked before the last number is entered.
    """
    message: Part = root
    part: Part | None = None
    for n in numbers:
        if part is not None:
            if part.kind == MULTIPART:
                if n > len(part.children):
                    return None
                part = part.children[n - 1]
                continue
            if part.kind != MESSAGE:
                return None
            message = part.children[0]
        if message.kind == MULTIPART:
            if n > len(message.children):
                return None
            part = message.children[n - 1]
        elif n == 1:
            part = message
        else:
            return None
    return part


def section_bytes(raw: bytes, section: Section, root: Part | None = None) -> bytes | None:
    """The data of ``section`` of ``raw`` (partial not applied); None when
    the part does not exist."""
    if root is None:
        root = parse_tree(raw)
    if section.part:
        part = find_part(root, section.part)
        if part is None:
            return None
    else:
        part = None
    text = section.text
    if text == "MIME":
        assert part is not None
        return raw[part.start : part.body_start]
    if part is None:
        message = root
    elif not text:
        return raw[part.body_start : part.end]
    elif part.kind == MESSAGE:
        message = part.children[0]
    else:
        # HEADER / TEXT of a part that is not a message/rfc822: nothing.
        return b""
    if text == "HEADER":
        return raw[message.start : message.body_start]
    if text == "TEXT":
        return raw[message.body_start : message.end]
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        block = raw[message.start : message.body_start]
        return header_fields(block, section.fields, text.endswith(".NOT"))
    return raw[message.start : message.end]


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, length = partial
    return data[origin : origin + length]


class UnknownCTE:
    """BINARY of a part in a transfer encoding we cannot decode (RFC 3516:
    the FETCH fails with NO [UNKNOWN-CTE])."""


UNKNOWN_CTE = UnknownCTE()
_IDENTITY_CTE = frozenset({b"7bit", b"8bit", b"binary"})


def binary_bytes(raw: bytes, section: Section, root: Part) -> bytes | UnknownCTE | None:
    """``BINARY[part]`` (RFC 3516): the part's body with its
    Content-Transfer-Encoding undone; ``BINARY[]`` is the whole message.
    None when the part does not exist."""
    if not section.part:
        return raw
    part = find_part(root, section.part)
    if part is None:
        return None
    body = raw[part.body_start : part.end]
    if part.kind != LEAF:
        return body  # multipart and message/rfc822 are never encoded
    cte = part.cte().lower()
    if cte in _IDENTITY_CTE:
        return body
    try:
        if cte == b"base64":
            return binascii.a2b_base64(body)
        if cte == b"quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        return UNKNOWN_CTE
    return UNKNOWN_CTE

"""FETCH data items (RFC 3501 6.4.5, RFC 7162 MODSEQ, RFC 3516 BINARY)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .encode import encode_astring
from .errors import ParseError
from .tokens import Reader, ascii_text

__all__ = ["FETCH_MACROS", "FetchItem", "Section", "parse_fetch_items"]

SIMPLE_ITEMS = frozenset(
    {
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        "EMAILID",  # RFC 8474
        "THREADID",
        "SAVEDATE",  # RFC 8514
    }
)
FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
BINARY_ITEMS = frozenset({"BINARY", "BINARY.PEEK", "BINARY.SIZE"})  # RFC 3516
_TEXT_SPECS = frozenset({"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})
_ITEM_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_SPEC = re.compile(rb"[A-Za-z0-9.]*")
# Section parts nest deeply only in pathological mail; bound the tuple.
_MAX_PART_DEPTH = 64


@dataclass(frozen=True)
class Section:
    """A ``BODY[...]`` section: ``part`` numbers (``1.2.3``) and a text spec:
    ``""`` (whole part), HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME.
    ``fields`` are upper-cased header names for the HEADER.FIELDS specs;
    ``written`` are the names as the client wrote them, repeats and all: the
    response echoes the section as requested (``(from from)``)."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()
    written: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        spec = ".".join([*map(str, self.part), *([self.text] if self.text else [])])
        if self.fields:
            shown = self.written or self.fields
            names = b" ".join(encode_astring(f) for f in shown).decode("ascii")
            spec += f" ({names})"
        return spec


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute.  ``name`` is the attribute (BODY for both the
    BODY structure and ``BODY[...]``); ``section`` is set for ``BODY[...]``
    and ``BODY.PEEK[...]``; ``partial`` is ``(origin, length)``."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    @property
    def sets_seen(self) -> bool:
        """Fetching this implicitly sets \\Seen (RFC 3501 6.4.5)."""
        if self.section is not None:
            return not self.peek and self.name != "BINARY.SIZE"
        return self.name in ("RFC822", "RFC822.TEXT")

    def response_name(self, origin: int | None = None) -> str:
        """The name the server echoes in the FETCH response: never ``.PEEK``,
        and a partial echoes only its origin (``BODY[]<0>``).  ``origin``
        defaults to the requested one."""
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0] if origin is None else origin}>"
        return name

    def __str__(self) -> str:
        """As a client would write it (``BODY.PEEK[1]<0.100>``)."""
        if self.section is None:
            return self.name
        text = f"{self.name}{'.PEEK' if self.peek else ''}[{self.section}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}.{self.partial[1]}>"
        return text


def parse_fetch_items(reader: Reader) -> tuple[FetchItem, ...]:
    """A macro, a single item, or a parenthesised list of items."""
    if reader.peek() == 0x28:  # "("
        items = reader.paren_list(lambda: _fetch_item(reader), allow_empty=False)
    else:
        start = reader.pos
        word = reader.run(_ITEM_NAME).upper().decode("ascii")
        if word in FETCH_MACROS and reader.peek() != 0x5B:  # not "["
            return tuple(FetchItem(name) for name in FETCH_MACROS[word])
        reader.pos = start
        items = [_fetch_item(reader)]
    # Drop duplicates, keep order; items differing only in how the client
    # spelled header names stay apart, since each is echoed as written.
    return tuple({(i, str(i)): i for i in items}.values())


def _fetch_item(reader: Reader) -> FetchItem:
    raw = reader.run(_ITEM_NAME)
    if not raw:
        raise ParseError("Expected a fetch attribute")
    word = raw.upper().decode("ascii")
    if reader.peek() != 0x5B:  # "["
        if word in BINARY_ITEMS:
            raise ParseError(f"{word} needs a section ({word}[1])")
        if word in SIMPLE_ITEMS:
            return FetchItem(word)
        if word in FETCH_MACROS:
            raise ParseError(f"{word} cannot be used inside a list")
        raise ParseError(f"Unknown fetch attribute {word[:40]}")
    if word in BINARY_ITEMS:
        section = _binary_section(reader)
        partial = None
        if word != "BINARY.SIZE" and reader.peek() == 0x3C:  # "<"
            partial = _partial(reader)
        name = "BINARY.SIZE" if word == "BINARY.SIZE" else "BINARY"
        return FetchItem(name, section, word == "BINARY.PEEK", partial)
    if word not in ("BODY", "BODY.PEEK"):
        known = word in SIMPLE_ITEMS
        raise ParseError(
            f"{word[:40]} takes no section" if known else f"Unknown fetch attribute {word[:40]}"
        )
    section = _section(reader)
    partial = _partial(reader) if reader.peek() == 0x3C else None  # "<"
    return FetchItem("BODY", section, word == "BODY.PEEK", partial)


def _section(reader: Reader) -> Section:
    reader.expect(b"[", "[")
    spec = reader.run(_SECTION_SPEC).upper().decode("ascii")
    part: list[int] = []
    pieces = spec.split(".") if spec else []
    if "" in pieces:
        raise ParseError(f"Invalid section {spec[:40]}")
    while pieces and pieces[0].isdigit():
        number = pieces.pop(0)
        if len(number) > 10 or not 0 < int(number) < 2**32:
            raise ParseError("Invalid section part number")
        part.append(int(number))
    if len(part) > _MAX_PART_DEPTH:
        raise ParseError("Section part nested too deeply")
    text = ".".join(pieces)
    if text not in _TEXT_SPECS:
        raise ParseError(f"Invalid section {spec[:40]}")
    if text == "MIME" and not part:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        reader.sp()
        written = tuple(reader.paren_list(lambda: _header_name(reader), allow_empty=False))
        fields = tuple(dict.fromkeys(n.upper() for n in written))
        reader.expect(b"]", "]")
        return Section(tuple(part), text, fields, written)
    reader.expect(b"]", "]")
    return Section(tuple(part), text, fields)


def _binary_section(reader: Reader) -> Section:
    """RFC 3516: ``"[" [section-part] "]"``, part numbers only."""
    reader.expect(b"[", "[")
    spec = reader.run(_SECTION_SPEC).decode("ascii")
    pieces = spec.split(".") if spec else []
    if not all(p.isdigit() and len(p) <= 10 and 0 < int(p) < 2**32 for p in pieces):
        raise ParseError(f"Invalid binary section {spec[:40]} (part numbers only)")
    if len(pieces) > _MAX_PART_DEPTH:
        raise ParseError("Section part nested too deeply")
    reader.expect(b"]", "]")
    return Section(tuple(int(p) for p in pieces))


def _header_name(reader: Reader) -> str:
    name = ascii_text(reader.astring("header field name"), "header field name")
    if not name or any(not 0x21 <= ord(c) <= 0x7E or c == ":" for c in name):
        raise ParseError("Invalid header field name")
    return name


def _partial(reader: Reader) -> tuple[int, int]:
    reader.expect(b"<", "<")
    origin = reader.number("partial origin")
    reader.expect(b".", "partial length (<origin.length>)")
    length = reader.number("partial length", nonzero=True)
    reader.expect(b">", ">")
    return origin, length

"""Encoding helpers for server responses.  Everything returns ``bytes``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

import twisted.mail.imap4  # noqa: F401  (registers the "imap4-utf-7" codec)

from .sequence import SequenceSet
from .tokens import MONTHS

__all__ = [
    "compress_sequence_set",
    "encode_astring",
    "encode_mailbox",
    "encode_nstring",
    "format_flag_list",
    "format_internaldate",
    "quote_or_literal",
]

_QUOTABLE = re.compile(rb"[\x20-\x7e]*\Z")
_ATOM_SAFE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+\Z')
_ESCAPE = re.compile(rb'(["\\])')


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def quote_or_literal(value: str | bytes, *, max_quoted: int = 1024) -> bytes:
    """A quoted string when the value is short printable ASCII, otherwise a
    literal (8-bit data, CR, LF and NUL cannot be quoted)."""
    data = _as_bytes(value)
    if len(data) <= max_quoted and _QUOTABLE.match(data):
        return b'"' + _ESCAPE.sub(rb"\\\1", data) + b'"'
    return b"{%d}\r\n" % len(data) + data


def encode_astring(value: str | bytes) -> bytes:
    """An atom when that is unambiguous, else quoted or literal."""
    data = _as_bytes(value)
    if _ATOM_SAFE.match(data) and data.upper() != b"NIL":
        return data
    return quote_or_literal(data)


def encode_nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else quote_or_literal(value)


def encode_mailbox(name: str, *, utf8: bool = False) -> bytes:
    """Modified UTF-7, always quoted (the encoding leaves only printable
    ASCII); with ``utf8`` (UTF8=ACCEPT enabled, RFC 6855 §3) the name as a
    UTF-8 quoted string."""
    if utf8:
        return b'"' + _ESCAPE.sub(rb"\\\1", name.encode("utf-8")) + b'"'
    return quote_or_literal(name.encode("imap4-utf-7"))


def format_flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen \\Deleted $Forwarded)``."""
    return b"(" + b" ".join(f.encode("ascii") for f in flags) + b")"


def format_internaldate(moment: datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (quotes included; English month names
    whatever the locale; a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    text = (
        f'"{moment.day:02d}-{MONTHS[moment.month - 1]}-{moment.year:04d} '
        f'{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {sign}{hours:02d}{mins:02d}"'
    )
    return text.encode("ascii")


def compress_sequence_set(numbers: Iterable[int], *, sort: bool = True) -> bytes:
    """``1:5,7,9:10``.  Keep ``sort=False`` for COPYUID/APPENDUID sets whose
    order pairs source with destination UIDs."""
    return str(SequenceSet.from_numbers(numbers, sort=sort)).encode("ascii")

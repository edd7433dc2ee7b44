"""RFC 3501 sequence sets (``1:*``, ``*:4``, ``1,3:5,7``).

The set itself (``SequenceSet``, kept as written, ``*`` unresolved) lives in
the protocol-neutral ``exmaild.searchquery`` so the store can evaluate it;
this module parses the IMAP syntax into it.
"""

from __future__ import annotations

import re

from exmaild.searchquery import SeqRange, SequenceSet

from .errors import ParseError
from .tokens import MAX_NUMBER, Reader

__all__ = [
    "SAVED", "SavedResult", "SeqRange", "SequenceSet", "parse_sequence_set", "read_sequence_set",
]

_SYNTAX = re.compile(r"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*\Z")
_MAX_DIGITS = len(str(MAX_NUMBER))
_SET_CHARS = re.compile(rb"[0-9*:,]+")


def _number(text: str) -> int | None:
    if text == "*":
        return None
    if len(text) > _MAX_DIGITS or not 0 < int(text) <= MAX_NUMBER:
        raise ParseError(f"Invalid number {text[:12]} in sequence set")
    return int(text)


def parse_sequence_set(text: str | bytes) -> SequenceSet:
    """Parse e.g. ``1:*`` / ``*:4`` / ``1,3:5,7`` (``$`` is not supported)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not _SYNTAX.match(text):
        raise ParseError("Invalid sequence set")
    ranges = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        low = _number(first)
        ranges.append(SeqRange(low, _number(last) if last else low))
    return SequenceSet(tuple(ranges))


class SavedResult(SequenceSet):
    """``$`` (RFC 5182 SEARCHRES): the last ``SEARCH RETURN (SAVE)`` result,
    replaced by the real set when the command runs (searchres.py). Its one
    range matches nothing should it ever be evaluated as is."""

    def __str__(self) -> str:
        return "$"


SAVED = SavedResult((SeqRange(0, 0),))


def read_sequence_set(reader: Reader) -> SequenceSet:
    """Read a sequence set at the reader's position (``$`` included)."""
    if reader.take(b"$"):
        return SAVED
    return parse_sequence_set(reader.run(_SET_CHARS))

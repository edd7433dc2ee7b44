"""RFC 3501 sequence sets (``1:*``, ``*:4``, ``1,3:5,7``).

A set is kept as written (``*`` unresolved) and resolved on demand against
the highest number in use: the highest message sequence number, or the
highest UID.  ``n:*`` with ``n`` beyond that maximum still includes the
maximum, as RFC 3501 requires (``*`` is the largest number *in use*).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ParseError
from .tokens import MAX_NUMBER, Reader

__all__ = ["SeqRange", "SequenceSet", "parse_sequence_set", "read_sequence_set"]

_SYNTAX = re.compile(r"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*\Z")
_MAX_DIGITS = len(str(MAX_NUMBER))
_SET_CHARS = re.compile(rb"[0-9*:,]+")


@dataclass(frozen=True)
class SeqRange:
    """``first:last``; ``None`` stands for ``*``; a single number has
    ``first == last``.  The bounds may be in either order (``5:2``)."""

    first: int | None
    last: int | None

    def bounds(self, max_value: int) -> tuple[int, int]:
        """Low and high end with ``*`` replaced by ``max_value`` (unclamped)."""
        a = max_value if self.first is None else self.first
        b = max_value if self.last is None else self.last
        return (a, b) if a <= b else (b, a)

    def __str__(self) -> str:
        first = "*" if self.first is None else str(self.first)
        if self.first == self.last:
            return first
        return f"{first}:{'*' if self.last is None else self.last}"


@dataclass(frozen=True)
class SequenceSet:
    ranges: tuple[SeqRange, ...]

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ValueError("a sequence set has at least one range")

    def __str__(self) -> str:
        return ",".join(map(str, self.ranges))

    @property
    def uses_star(self) -> bool:
        return any(r.first is None or r.last is None for r in self.ranges)

    def highest_explicit(self) -> int:
        """Largest number written out (0 if only ``*``): a sequence-number set
        naming a message beyond the mailbox size deserves a BAD."""
        numbers = [n for r in self.ranges for n in (r.first, r.last) if n is not None]
        return max(numbers, default=0)

    def intervals(self, max_value: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive intervals clamped to ``1..max_value``."""
        clamped = []
        for rng in self.ranges:
            low, high = rng.bounds(max_value)
            low, high = max(low, 1), min(high, max_value)
            if low <= high:
                clamped.append((low, high))
        clamped.sort()
        merged: list[tuple[int, int]] = []
        for low, high in clamped:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
            else:
                merged.append((low, high))
        return merged

    def resolve(self, max_value: int) -> list[int]:
        """Every number in the set, ascending.  Bounded by ``max_value``; for
        UID sets prefer ``intervals`` and intersect with the UIDs in use."""
        return [n for low, high in self.intervals(max_value) for n in range(low, high + 1)]

    def contains(self, number: int, max_value: int) -> bool:
        if not 1 <= number <= max_value:
            return False
        for rng in self.ranges:
            low, high = rng.bounds(max_value)
            if low <= number <= high:
                return True
        return False

    @classmethod
    def from_numbers(cls, numbers: Iterable[int], *, sort: bool = True) -> SequenceSet:
        """Compress numbers into ranges.  With ``sort=False`` the given order
        is kept (COPYUID pairs source and destination UIDs by position), and
        only ascending runs are merged."""
        values = sorted(set(numbers)) if sort else list(numbers)
        if not values:
            raise ValueError("cannot build an empty sequence set")
        ranges: list[SeqRange] = []
        start = prev = values[0]
        for value in values[1:]:
            if value == prev + 1:
                prev = value
                continue
            ranges.append(SeqRange(start, prev))
            start = prev = value
        ranges.append(SeqRange(start, prev))
        return cls(tuple(ranges))


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


def read_sequence_set(reader: Reader) -> SequenceSet:
    """Read a sequence set at the reader's position."""
    return parse_sequence_set(reader.run(_SET_CHARS))

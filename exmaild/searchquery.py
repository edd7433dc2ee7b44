"""Protocol-neutral search queries: the key tree and sequence/UID sets.

The IMAP parser (``exmaild.protocols.imap.search_parser``) builds these
objects; the store (``exmaild.store.search``) compiles them to SQL. Neither
layer imports the other: both point down to this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

__all__ = [
    "SearchAll",
    "SearchAnd",
    "SearchAge",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchModSeq",
    "SearchNot",
    "SearchOr",
    "SearchSequence",
    "SearchSize",
    "SearchText",
    "SearchUid",
    "SeqRange",
    "SequenceSet",
    "any_key",
]


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


@dataclass(frozen=True)
class SearchAll:
    pass


@dataclass(frozen=True)
class SearchAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True)
class SearchFlag:
    """``flag`` (system flag in canonical case, or keyword) is set / unset."""

    flag: str
    present: bool = True


@dataclass(frozen=True)
class SearchSequence:
    sequence_set: SequenceSet


@dataclass(frozen=True)
class SearchUid:
    sequence_set: SequenceSet


@dataclass(frozen=True)
class SearchDate:
    """``field`` INTERNAL (BEFORE/ON/SINCE), SENT (SENTBEFORE/...) or SAVED
    (RFC 8514 SAVEDBEFORE/...: when the message entered the mailbox);
    ``op`` is BEFORE, ON or SINCE."""

    field: str
    op: str
    date: date


@dataclass(frozen=True)
class SearchAge:
    """RFC 5032 WITHIN: ``op`` OLDER (internal date more than ``seconds``
    before now) or YOUNGER (at most ``seconds`` before now)."""

    op: str
    seconds: int


@dataclass(frozen=True)
class SearchSize:
    """``op`` is LARGER or SMALLER (RFC822.SIZE strictly above/below)."""

    op: str
    size: int


@dataclass(frozen=True)
class SearchHeader:
    """Substring of a header: FROM/TO/CC/BCC/SUBJECT or HEADER <field>.
    ``field`` is upper-cased; an empty ``value`` matches any such header."""

    field: str
    value: str


@dataclass(frozen=True)
class SearchText:
    """``scope`` BODY (body only) or TEXT (header and body)."""

    scope: str
    value: str


@dataclass(frozen=True)
class SearchModSeq:
    """RFC 7162 MODSEQ; ``entry`` / ``entry_type`` are the optional
    ``"/flags/\\Seen" priv|shared|all`` metadata selector."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


SearchKey = (
    SearchAll
    | SearchAnd
    | SearchOr
    | SearchNot
    | SearchFlag
    | SearchSequence
    | SearchUid
    | SearchDate
    | SearchAge
    | SearchSize
    | SearchHeader
    | SearchText
    | SearchModSeq
)


def any_key(key: SearchKey, pred: Callable[[SearchKey], bool]) -> bool:
    """Whether ``pred`` holds for ``key`` or any key nested in it."""
    stack = [key]
    while stack:
        node = stack.pop()
        if pred(node):
            return True
        if isinstance(node, SearchAnd):
            stack.extend(node.keys)
        elif isinstance(node, SearchOr):
            stack.extend((node.left, node.right))
        elif isinstance(node, SearchNot):
            stack.append(node.key)
    return False

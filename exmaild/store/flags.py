"""IMAP system flags as a bit mask (keywords are stored as text beside it)."""

from __future__ import annotations

SEEN = 1
ANSWERED = 2
FLAGGED = 4
DELETED = 8
DRAFT = 16

BY_NAME: dict[str, int] = {
    "\\seen": SEEN,
    "\\answered": ANSWERED,
    "\\flagged": FLAGGED,
    "\\deleted": DELETED,
    "\\draft": DRAFT,
}
NAMES: tuple[tuple[int, str], ...] = (
    (SEEN, "\\Seen"),
    (ANSWERED, "\\Answered"),
    (FLAGGED, "\\Flagged"),
    (DELETED, "\\Deleted"),
    (DRAFT, "\\Draft"),
)


def to_names(mask: int, keywords: str = "") -> list[str]:
    names = [name for bit, name in NAMES if mask & bit]
    if keywords:
        names.extend(keywords.split())
    return names


def from_names(names: list[str] | tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    """(mask, keywords) from flag names; unknown system flags are ignored."""
    mask = 0
    keywords: list[str] = []
    for n in names:
        bit = BY_NAME.get(n.lower())
        if bit is not None:
            mask |= bit
        elif not n.startswith("\\") and n not in keywords:
            keywords.append(n)
    return mask, tuple(keywords)

"""Comparators and match types (RFC 5228 §2.7, RFC 5231 relational).

`:matches` is decided by a linear-time wildcard matcher first (a backtracking
regex over a long header with many `*` could take minutes); only when it
matches and the script uses variables is a regex run to fill ${1}..${9}.
"""

from __future__ import annotations

import re

_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_DIGITS = re.compile(r"[0-9]*")


def fold(s: str, comparator: str) -> str:
    """The comparator's canonical form: i;ascii-casemap folds ASCII letters only."""
    if comparator != "i;ascii-casemap":
        return s
    return s.lower() if s.isascii() else s.translate(_ASCII_UPPER)


def numeric(s: str) -> int | None:
    """i;ascii-numeric: the leading digits; None (positive infinity) without any."""
    m = _DIGITS.match(s)
    return int(m.group()) if m and m.group() else None


def _num_cmp(a: str, b: str) -> int:
    x, y = numeric(a), numeric(b)
    if x == y:
        return 0
    if x is None:
        return 1
    if y is None:
        return -1
    return -1 if x < y else 1


def compare(a: str, b: str, comparator: str) -> int:
    if comparator == "i;ascii-numeric":
        return _num_cmp(a, b)
    x, y = fold(a, comparator), fold(b, comparator)
    return (x > y) - (x < y)


def relation(cmp: int, rel: str) -> bool:
    return {"gt": cmp > 0, "ge": cmp >= 0, "lt": cmp < 0, "le": cmp <= 0, "eq": cmp == 0,
            "ne": cmp != 0}[rel]


def wildcard(value: str, pattern: str) -> bool:
    """Glob match with * and ? and backslash escapes, in O(len(value) * len(pattern))."""
    toks: list[str] = []  # "*", "?" or a literal character prefixed by "="
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            toks.append("=" + pattern[i + 1])
            i += 2
            continue
        toks.append(c if c in "*?" else "=" + c)
        i += 1
    v = p = 0
    star_p, star_v = -1, 0
    while v < len(value):
        if p < len(toks) and (toks[p] == "?" or (toks[p] != "*" and toks[p][1] == value[v])):
            v += 1
            p += 1
        elif p < len(toks) and toks[p] == "*":
            star_p, star_v = p, v
            p += 1
        elif star_p >= 0:
            p = star_p + 1
            star_v += 1
            v = star_v
        else:
            return False
    while p < len(toks) and toks[p] == "*":
        p += 1
    return p == len(toks)


def glob_captures(value: str, pattern: str, comparator: str) -> list[str]:
    """${0}..${9} of a :matches that matched: each * and ? in turn."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if comparator == "i;ascii-casemap" else 0)
    m = re.fullmatch("".join(out), value, flags)
    return list(m.groups()) if m else []


class Matcher:
    """One test's match type and comparator, applied to values and keys."""

    def __init__(self, tags: dict[str, object]) -> None:
        self.comparator = str(tags.get(":comparator", "i;ascii-casemap"))
        # (the parsed key list, its folded keys): keys without variables are
        # folded once for every message.
        self.folded_keys: tuple[object, list[str]] | None = None
        self.kind = "is"
        self.rel = ""
        for t in (":is", ":contains", ":matches", ":value", ":count"):
            if t in tags:
                self.kind = t[1:]
                if t in (":value", ":count"):
                    self.rel = str(tags[t]).lower()

    def one(self, value: str, key: str) -> bool:
        c = self.comparator
        if self.kind == "is":
            if c == "i;ascii-numeric":
                return _num_cmp(value, key) == 0
            return fold(value, c) == fold(key, c)
        if self.kind == "contains":
            return fold(key, c) in fold(value, c)
        if self.kind == "matches":
            return wildcard(fold(value, c), fold(key, c))
        if self.kind == "value":
            return relation(compare(value, key, c), self.rel)
        raise AssertionError(self.kind)

    def count(self, values: list[str], keys: list[str]) -> bool:
        n = str(len(values))
        return any(relation(compare(n, k, self.comparator), self.rel) for k in keys)

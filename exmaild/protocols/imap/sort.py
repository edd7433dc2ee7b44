"""SORT (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO, RFC 5267 ESORT) and
THREAD command arguments and their parsing; the commands run in cmd_sort.py.

    SORT [RETURN (options)] (sort-criteria) charset search-criteria
    THREAD algorithm charset search-criteria
"""

from __future__ import annotations

from dataclasses import dataclass

from exmaild.searchquery import SearchKey
from exmaild.store.sortkeys import SORT_KEYS, SortKey

from .errors import ParseError
from .search_parser import RETURN_OPTIONS, parse_search_keys
from .thread import ALGORITHMS
from .tokens import Reader

__all__ = ["SortArgs", "ThreadArgs", "parse_sort", "parse_thread"]


@dataclass(frozen=True)
class SortArgs:
    sort: tuple[SortKey, ...]
    charset: str
    key: SearchKey
    # ESORT (RFC 5267): the RETURN options, None for a plain ``* SORT``.
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ThreadArgs:
    algorithm: str
    charset: str
    key: SearchKey


def _charset(reader: Reader) -> str:
    # A non-ASCII name is just another unknown charset (NO [BADCHARSET]).
    return reader.astring("charset").decode("ascii", "replace")


def _criterion(reader: Reader) -> SortKey:
    word = reader.keyword("sort key")
    reverse = word == "REVERSE"
    if reverse:
        reader.sp()
        word = reader.keyword("sort key")
    if word not in SORT_KEYS:
        raise ParseError(f"Unknown sort key {word[:40]}")
    return SortKey(word, reverse)


def parse_sort(reader: Reader, *, max_depth: int) -> SortArgs:
    """Reader after ``SORT SP``."""
    returns = None
    if reader.peek() != 0x28:  # "(": no RETURN
        if reader.keyword("RETURN") != "RETURN":
            raise ParseError("Expected RETURN or a sort criteria list")
        reader.sp()
        options = reader.paren_list(lambda: reader.keyword("sort return option"))
        for option in options:
            if option not in RETURN_OPTIONS:
                raise ParseError(f"Unsupported sort return option {option[:40]}")
        returns = tuple(dict.fromkeys(options)) or ("ALL",)
        reader.sp()
    criteria = reader.paren_list(lambda: _criterion(reader), allow_empty=False)
    reader.sp()
    charset = _charset(reader)
    reader.sp()
    key = parse_search_keys(reader, charset, max_depth=max_depth)
    return SortArgs(tuple(criteria), charset, key, returns)


def parse_thread(reader: Reader, *, max_depth: int) -> ThreadArgs:
    """Reader after ``THREAD SP``."""
    algorithm = reader.keyword("threading algorithm")
    if algorithm not in ALGORITHMS:
        raise ParseError(f"Unsupported threading algorithm {algorithm[:40]}")
    reader.sp()
    charset = _charset(reader)
    reader.sp()
    key = parse_search_keys(reader, charset, max_depth=max_depth)
    return ThreadArgs(algorithm, charset, key)

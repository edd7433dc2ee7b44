"""SEARCH criteria (RFC 3501 6.4.4, RFC 7162 MODSEQ) parsed into a key tree.

The tree's types are protocol-neutral (``exmaild.searchquery``, re-exported
here); the store compiles them to SQL. The top level of a SEARCH is an
implicit AND of its keys.  NEW and OLD are expanded into flag keys so
evaluators only know the primitive ones.
"""

from __future__ import annotations

import codecs
import encodings
import encodings.aliases
import functools
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from exmaild.searchquery import (
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SearchUid,
    SequenceSet,
    any_key,
)

from .errors import BadCharsetError, ParseError
from .sequence import read_sequence_set
from .tokens import MAX_MODSEQ, Reader, ascii_text, canonical_flag, parse_date

__all__ = [
    "SearchAll",
    "SearchAnd",
    "SearchArgs",
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
    "charset_decoder",
    "parse_search",
    "parse_search_keys",
]


@dataclass(frozen=True)
class SearchArgs:
    charset: str | None
    key: SearchKey
    # RFC 4731 ``RETURN (...)``: the options asked for (``()`` means ALL);
    # None for a plain SEARCH, answered ``* SEARCH``.
    returns: tuple[str, ...] | None = None

    @property
    def uses_modseq(self) -> bool:
        """A MODSEQ key makes the response carry ``(MODSEQ n)`` (RFC 7162)."""
        return any_key(self.key, lambda k: isinstance(k, SearchModSeq))


# -- charsets -----------------------------------------------------------

# Codecs that are text encodings in Python's sense but not mail charsets.
_NOT_CHARSETS = frozenset(
    {"undefined", "idna", "punycode", "unicode_escape", "raw_unicode_escape", "mbcs", "oem"}
)
# Clients label supersets with the narrower name (GBK text as GB2312...):
# when strict decoding with the declared charset fails, try the superset.
# 8-bit "US-ASCII" (the default) strings are UTF-8 in practice.
_SUPERSET = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "cp950",
    "euc_kr": "cp949",
    "ascii": "utf-8",
}


@functools.cache
def _known_codec_names() -> frozenset[str]:
    # Checked before codecs.lookup(), which caches every name it is asked
    # about (misses too): arbitrary client input must not grow that cache.
    modules = {m.name for m in pkgutil.iter_modules(encodings.__path__)}
    return frozenset(set(encodings.aliases.aliases) | modules)


def _codec_for(normalised: str) -> str | None:
    # Only known names reach the cached lookup, so its cache stays bounded.
    return _known_codec(normalised) if normalised in _known_codec_names() else None


@functools.cache
def _known_codec(normalised: str) -> str | None:
    try:
        name = codecs.lookup(normalised).name
    except (LookupError, ValueError):
        return None
    try:
        b"x".decode(name)  # LookupError for bytes-to-bytes codecs (base64...)
    except LookupError:
        return None
    except Exception:  # a text codec that merely cannot decode "x" (UTF-16)
        pass
    return None if name.replace("-", "_") in _NOT_CHARSETS else name


def charset_decoder(charset: str | None) -> Callable[[bytes], str]:
    """Decoder for SEARCH strings; ``None`` means the US-ASCII default.
    Raises ``BadCharsetError`` for charsets we cannot decode."""
    label = "US-ASCII" if charset is None else charset
    normalised = encodings.normalize_encoding(label).lower()
    codec = _codec_for(normalised) if label.isascii() and len(label) <= 64 else None
    if codec is None:
        raise BadCharsetError(label)
    fallback = _SUPERSET.get(codec)

    def decode(raw: bytes) -> str:
        for name in (codec, fallback):
            if name is None:
                continue
            try:
                return raw.decode(name)
            except Exception:  # codec implementations raise assorted errors
                continue
        raise ParseError(f"Search string is not valid {label}")

    return decode


# -- parsing -------------------------------------------------------------

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "RECENT": ("\\Recent", True),
    "OLD": ("\\Recent", False),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_DATE_KEYS = {
    "BEFORE": ("INTERNAL", "BEFORE"),
    "ON": ("INTERNAL", "ON"),
    "SINCE": ("INTERNAL", "SINCE"),
    "SENTBEFORE": ("SENT", "BEFORE"),
    "SENTON": ("SENT", "ON"),
    "SENTSINCE": ("SENT", "SINCE"),
    "SAVEDBEFORE": ("SAVED", "BEFORE"),
    "SAVEDON": ("SAVED", "ON"),
    "SAVEDSINCE": ("SAVED", "SINCE"),
}
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})
# Nesting bound ([limits] imap_nesting_depth): keeps recursion, here and in
# evaluators, far from Python's limit.
_MAX_DEPTH = 32
_WORD = re.compile(rb"[A-Za-z]+")
# RFC 4731 ESEARCH return options, and RFC 5182 SAVE (not for SORT).
RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT"})
SEARCH_RETURN_OPTIONS = RETURN_OPTIONS | {"SAVE"}


def parse_search(reader: Reader, *, max_depth: int = _MAX_DEPTH) -> SearchArgs:
    """``[CHARSET astring SP] search-key *(SP search-key)``, reader after
    ``SEARCH SP``.  ``max_depth`` bounds parenthesis/NOT/OR nesting."""
    charset = None
    returns = None
    start = reader.pos
    if reader.run(_WORD).upper() == b"RETURN" and reader.take(b" "):
        options = reader.paren_list(lambda: reader.keyword("search return option"))
        for option in options:
            if option not in SEARCH_RETURN_OPTIONS:
                raise ParseError(f"Unsupported search return option {option[:40]}")
        returns = tuple(dict.fromkeys(options)) or ("ALL",)
        reader.sp()
    else:
        reader.pos = start
    start = reader.pos
    if reader.run(_WORD).upper() == b"CHARSET" and reader.take(b" "):
        # A non-ASCII name is just another unknown charset (NO, not BAD).
        charset = reader.astring("charset").decode("ascii", "replace")
        reader.sp()
    else:
        reader.pos = start
    parser = _SearchParser(reader, charset_decoder(charset), max_depth)
    keys = [parser.key(0)]
    while reader.take(b" "):
        keys.append(parser.key(0))
    reader.expect_end()
    return SearchArgs(charset, keys[0] if len(keys) == 1 else SearchAnd(tuple(keys)), returns)


def parse_search_keys(
    reader: Reader, charset: str | None, *, max_depth: int = _MAX_DEPTH
) -> SearchKey:
    """The search keys after a charset given apart (SORT, THREAD: RFC 5256),
    as their implicit AND; raises ``BadCharsetError`` for an unknown charset."""
    parser = _SearchParser(reader, charset_decoder(charset), max_depth)
    keys = [parser.key(0)]
    while reader.take(b" "):
        keys.append(parser.key(0))
    return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


class _SearchParser:
    def __init__(self, reader: Reader, decode: Callable[[bytes], str], max_depth: int) -> None:
        self.reader = reader
        self.decode = decode
        self.max_depth = max_depth

    def key(self, depth: int) -> SearchKey:
        if depth > self.max_depth:
            raise ParseError("Search criteria nested too deeply")
        reader = self.reader
        char = reader.peek()
        if char == 0x28:  # "("
            keys = reader.paren_list(lambda: self.key(depth + 1), allow_empty=False)
            return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
        if char in (0x2A, 0x24) or 0x30 <= char <= 0x39:  # "*", "$" (RFC 5182) or digit
            return SearchSequence(self._sequence_set())
        word = reader.keyword("search key")
        return self._keyword(word, depth)

    def _keyword(self, word: str, depth: int) -> SearchKey:
        if word in ("ALL", "SAVEDATESUPPORTED"):  # every message has a save date
            return SearchAll()
        if word == "NEW":
            return SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))
        if word in _FLAG_KEYS:
            return SearchFlag(*_FLAG_KEYS[word])
        handler = _KEYS_WITH_ARGUMENTS.get(word)
        if handler is None:
            raise ParseError(f"Unknown search key {word[:40]}")
        self.reader.sp()
        return handler(self, word, depth)

    def _not(self, word: str, depth: int) -> SearchKey:
        return SearchNot(self.key(depth + 1))

    def _or(self, word: str, depth: int) -> SearchKey:
        left = self.key(depth + 1)
        self.reader.sp()
        return SearchOr(left, self.key(depth + 1))

    def _header(self, word: str, depth: int) -> SearchKey:
        if word != "HEADER":  # FROM, TO, CC, BCC, SUBJECT
            return SearchHeader(word, self._string())
        raw = self.reader.astring("header field name")
        self.reader.sp()
        return SearchHeader(ascii_text(raw, "header field name").upper(), self._string())

    def _text(self, word: str, depth: int) -> SearchKey:
        return SearchText(word, self._string())

    def _keyword_flag(self, word: str, depth: int) -> SearchKey:
        return SearchFlag(self.reader.flag(), word == "KEYWORD")

    def _date_key(self, word: str, depth: int) -> SearchKey:
        return SearchDate(*_DATE_KEYS[word], self._date())

    def _size(self, word: str, depth: int) -> SearchKey:
        return SearchSize(word, self.reader.number("size"))

    def _age(self, word: str, depth: int) -> SearchKey:
        return SearchAge(word, self.reader.number("interval", nonzero=True))

    def _uid(self, word: str, depth: int) -> SearchKey:
        return SearchUid(self._sequence_set())

    def _string(self) -> str:
        return self.decode(self.reader.astring("search string"))

    def _sequence_set(self) -> SequenceSet:
        return read_sequence_set(self.reader)

    def _date(self) -> date:
        if self.reader.peek() == 0x22:
            return parse_date(self.reader.quoted())
        return parse_date(self.reader.atom("date"))

    def _modseq(self, word: str, depth: int) -> SearchModSeq:
        reader = self.reader
        entry = entry_type = None
        if reader.peek() == 0x22:  # entry-name = "/flags/<flag>"
            entry = ascii_text(reader.quoted(), "entry name")
            if not entry.lower().startswith("/flags/") or len(entry) == 7:
                raise ParseError("Invalid MODSEQ entry name")
            entry = "/flags/" + canonical_flag(entry[7:])
            reader.sp()
            entry_type = reader.keyword("entry type").lower()
            if entry_type.upper() not in _ENTRY_TYPES:
                raise ParseError("MODSEQ entry type must be priv, shared or all")
            reader.sp()
        return SearchModSeq(reader.number("mod-sequence", maximum=MAX_MODSEQ), entry, entry_type)


_KeyHandler = Callable[[_SearchParser, str, int], SearchKey]
_KEYS_WITH_ARGUMENTS: dict[str, _KeyHandler] = {
    "NOT": _SearchParser._not,
    "OR": _SearchParser._or,
    "HEADER": _SearchParser._header,
    **{word: _SearchParser._header for word in _HEADER_KEYS},
    "BODY": _SearchParser._text,
    "TEXT": _SearchParser._text,
    "KEYWORD": _SearchParser._keyword_flag,
    "UNKEYWORD": _SearchParser._keyword_flag,
    **{word: _SearchParser._date_key for word in _DATE_KEYS},
    "LARGER": _SearchParser._size,
    "SMALLER": _SearchParser._size,
    "UID": _SearchParser._uid,
    "OLDER": _SearchParser._age,
    "YOUNGER": _SearchParser._age,
    "MODSEQ": _SearchParser._modseq,
}

"""Turning raw header and body bytes into searchable text.

Every function here is total: unknown charsets, broken base64 or encoded-words
degrade to a best guess (UTF-8, then GB18030, which decodes almost anything).
"""

from __future__ import annotations

import binascii
import codecs
import html
import re
from functools import lru_cache
from urllib.parse import unquote_to_bytes

# Labels seen in the wild that Python either lacks or that senders use for a
# superset (GB2312-labelled mail routinely contains GBK-only characters).
_ALIASES = {
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "windows-936": "gb18030",
    "chinese": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "iso-8859-1": "cp1252",  # as browsers do: C1 bytes are really cp1252
    "iso-8859-8-i": "iso-8859-8",
    "unicode-1-1-utf-7": "utf-7",
}
# Text codecs that are not charsets and must never be applied to mail.
_REFUSED = {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "mbcs"}
# Codecs for which pure-ASCII bytes may still need decoding (or are invalid).
_NOT_ASCII_COMPATIBLE = {
    "utf-7",
    "hz",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
}


@lru_cache(maxsize=256)
def codec_for(charset: str) -> str | None:
    """Python codec name for a MIME charset label, or None when unusable."""
    label = charset.strip().strip('"').lower().partition("*")[0]  # RFC 2231 "utf-8*en"
    if label in _ALIASES:
        return _ALIASES[label]
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    # codecs.lookup also knows byte transforms such as "base64" and "zlib".
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return info.name


def _try_decode(data: bytes, codec: str, errors: str = "strict") -> str | None:
    try:
        text = data.decode(codec, errors)
    except (UnicodeError, ValueError, LookupError, TypeError):  # failure means "guess"
        return None
    if codec in _NOT_ASCII_COMPATIBLE:  # these can yield lone surrogates: unstorable
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    codec = codec_for(charset) if charset else None
    if data.isascii() and codec not in _NOT_ASCII_COMPATIBLE:
        return data.decode("ascii")
    usable = codec is not None and codec != "ascii"
    text = _try_decode(data, codec) if usable else None
    if text is None:
        text = _try_decode(data, "utf-8")
    if text is None and usable:
        text = _try_decode(data, codec, "replace")
    return text if text is not None else data.decode("gb18030", "replace")


def b64decode(data: bytes) -> bytes:
    """Lenient base64: ignores junk and bad padding instead of failing."""
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        extra = len(clean) % 4
        if extra == 1:  # a lone trailing sextet carries no whole byte
            clean = clean[:-1]
        elif extra:
            clean += b"=" * (4 - extra)
        try:
            return binascii.a2b_base64(clean)
        except (binascii.Error, ValueError):
            return b""


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def decode_rfc2047(s: str) -> str:
    """Decode encoded-words; adjacent words of one charset are joined as bytes
    first because some clients split a multibyte character across words."""
    if "=?" not in s:
        return s
    out: list[str] = []
    pending = bytearray()
    pending_cs: str | None = None
    pos = 0
    for m in _ENCODED_WORD.finditer(s):
        gap = s[pos : m.start()]
        if gap and not (pending_cs is not None and gap.isspace()):
            if pending_cs is not None:
                out.append(decode_bytes(bytes(pending), pending_cs))
                pending_cs = None
            out.append(gap)
        charset, enc, text = m.groups()
        raw = text.encode("utf-8", "replace")
        data = b64decode(raw) if enc in "bB" else binascii.a2b_qp(raw, header=True)
        if pending_cs is not None and charset.lower() != pending_cs:
            out.append(decode_bytes(bytes(pending), pending_cs))
            pending_cs = None
        if pending_cs is None:
            pending_cs, pending = charset.lower(), bytearray()
        pending += data
        pos = m.end()
    if pending_cs is not None:
        out.append(decode_bytes(bytes(pending), pending_cs))
    out.append(s[pos:])
    return "".join(out)


def decode_header(value: bytes) -> str:
    """Header bytes to text: raw 8-bit guessed, then RFC 2047 decoded."""
    return decode_rfc2047(decode_bytes(value))


def decode_rfc2231(value: bytes) -> str:
    """Value of an extended "attr*" parameter: charset'lang'%XX-encoded."""
    charset, _, rest = value.partition(b"'")
    _, _, encoded = rest.partition(b"'")
    if not rest:  # no quote at all: not really extended
        encoded = charset
        charset = b""
    return decode_bytes(unquote_to_bytes(encoded), charset.decode("latin-1") or None)


def decode_body(data: bytes, cte: bytes, charset: str | None) -> str:
    enc = cte.lower()
    if enc == b"base64":
        data = b64decode(data)
    elif enc == b"quoted-printable":
        data = binascii.a2b_qp(data)
    return decode_bytes(data, charset)


_DROP_BLOCKS = {"<script": "</script", "<style": "</style", "<!--": "-->"}
_TAG = re.compile(r"<[^<>]*>")  # [^<>] keeps stray "<" from making this quadratic
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but newline
_NEWLINES = re.compile(r" ?\n\s*")  # runs are single spaces by now: stays linear


def _drop_blocks(s: str) -> str:
    """Remove script/style/comment blocks in one linear pass."""
    low = s.lower()
    nxt = {opening: low.find(opening) for opening in _DROP_BLOCKS}
    out: list[str] = []
    pos = 0
    while True:
        for opening, i in nxt.items():
            if 0 <= i < pos:  # only look again for openings we have passed
                nxt[opening] = low.find(opening, pos)
        live = [(i, opening) for opening, i in nxt.items() if i >= 0]
        if not live:
            break
        i, opening = min(live)
        out.append(s[pos:i])
        j = low.find(_DROP_BLOCKS[opening], i)
        if j < 0:
            return "".join(out)
        k = low.find(">", j)
        pos = len(s) if k < 0 else k + 1
    out.append(s[pos:])
    return "".join(out)


def html_to_text(s: str) -> str:
    text = html.unescape(_TAG.sub(" ", _drop_blocks(s)))
    return _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()

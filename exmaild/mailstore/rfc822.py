"""Tolerant raw-byte parsing of RFC 5322 headers and addresses and RFC 2045 params.

Values stay bytes (latin-1 round trip internally) so that IMAP responses carry
exactly what the sender wrote; decoding for humans happens elsewhere.
"""

from __future__ import annotations

import re

Field = tuple[bytes, bytes]  # (name as sent, unfolded value)
Param = tuple[bytes, bytes]
# (name, route, mailbox, host); a group start is (None, None, name, None) and
# a group end is all None, which is exactly how IMAP ENVELOPE encodes groups.
Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
GROUP_END: Address = (None, None, None, None)

# Placeholders for broken addresses, as Dovecot uses: a NIL host would make
# clients read the address as a group marker.
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

_BLANK_LINE = re.compile(rb"\n\r?\n")
# A message is bytes, or a read-only mmap of a spool file (mailstore/spool.py),
# which has find() and slicing and works with re, but has no count() or
# startswith(): the helpers below work on both, without copying the message.
_COUNT_CHUNK = 1 << 20


def count(raw: bytes, sub: bytes, start: int = 0, end: int | None = None) -> int:
    """``raw.count(sub, start, end)`` for a one-octet ``sub``."""
    if isinstance(raw, bytes):
        return raw.count(sub, start, len(raw) if end is None else end)
    end = len(raw) if end is None else min(end, len(raw))
    n = 0
    for pos in range(start, end, _COUNT_CHUNK):
        n += raw[pos : min(pos + _COUNT_CHUNK, end)].count(sub)
    return n


def startswith(raw: bytes, prefix: bytes, start: int, end: int) -> bool:
    """``raw.startswith(prefix, start, end)``."""
    return end - start >= len(prefix) and raw[start : start + len(prefix)] == prefix


def header_end(raw: bytes, start: int, end: int) -> int:
    """Offset just past the empty line closing the header block at ``start``.

    Without an empty line the whole region is header (so the body is empty).
    """
    if startswith(raw, b"\r\n", start, end):
        return start + 2
    if startswith(raw, b"\n", start, end):
        return start + 1
    m = _BLANK_LINE.search(raw, start, end)
    return m.end() if m is not None else end


# A field line and its continuation lines; names cannot contain whitespace,
# which also rejects an mbox "From user@host Mon Jan 1 10:00:00" line.
_FIELD = re.compile(rb"^([^ \t\r\n:]+)[ \t]*:(.*(?:\n[ \t].*)*)", re.MULTILINE)


def parse_fields(block: bytes) -> list[Field]:
    """Split a header block into unfolded fields; lines that are not fields are dropped."""
    return [
        (name, value.strip(b" \t\r") if b"\n" not in value else _unfold(value))
        for name, value in _FIELD.findall(block)
    ]


def _unfold(value: bytes) -> bytes:
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def first_fields(fields: list[Field]) -> dict[bytes, bytes]:
    """Lower-cased name -> value of its first occurrence."""
    out: dict[bytes, bytes] = {}
    for name, value in fields:
        out.setdefault(name.lower(), value)
    return out


# --- RFC 5322 tokens -------------------------------------------------------
# Work on latin-1 text: one char per byte, and str regexes are convenient.
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      |"(?P<qs>[^"\\]*(?:\\.[^"\\]*)*)"?
      |(?P<dl>\[[^\]\\]*(?:\\.[^\]\\]*)*\]?)
      |(?P<sp>[<>:;@,(])
      |(?P<atom>[^ \t\r\n"\[<>:;@,()\\]+|.)""",
    re.VERBOSE | re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)

_WSP_RUN = re.compile(r"[ \t\r\n]+")


def _collapse(s: str) -> str:
    """Collapse ASCII whitespace only: in latin-1 text str.split() would also
    split on 0xA0 and 0x85, which are bytes of UTF-8 characters such as 张."""
    return _WSP_RUN.sub(" ", s).strip(" ")


Token = tuple[str, str]  # kind ("a" atom, "q" quoted, "c" comment, "d" literal, or the special)


def _comment_end(s: str, i: int) -> int:
    """Index after the comment opening at s[i] (comments nest); len(s) if unclosed."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def tokenize(s: str) -> list[Token]:
    toks: list[Token] = []
    pos, n = 0, len(s)
    while pos < n:
        m = _TOKEN.match(s, pos)
        assert m is not None  # the last alternative matches any character
        kind = m.lastgroup
        if kind == "sp" and m.group("sp") == "(":
            end = _comment_end(s, pos)
            toks.append(("c", _UNESCAPE.sub(r"\1", s[pos + 1 : end].removesuffix(")"))))
            pos = end
            continue
        pos = m.end()
        if kind == "qs":
            toks.append(("q", _UNESCAPE.sub(r"\1", m.group("qs"))))
        elif kind == "sp":
            toks.append((m.group("sp"), ""))
        elif kind == "dl":
            toks.append(("d", m.group("dl")))
        elif kind == "atom":
            toks.append(("a", m.group("atom")))
    return toks


def _phrase(toks: list[Token]) -> str:
    return " ".join(v for k, v in toks if k in ("a", "q") and v)


def _addr_spec(toks: list[Token]) -> tuple[bytes, bytes]:
    words = [t for t in toks if t[0] != "c"]
    at = max((i for i, t in enumerate(words) if t[0] == "@"), default=-1)
    local = "".join(v for k, v in (words[:at] if at >= 0 else words) if k in ("a", "q"))
    domain = "".join(v for k, v in words[at + 1 :] if k in ("a", "d")) if at >= 0 else ""
    return (
        local.encode("latin-1") if local else MISSING_MAILBOX,
        domain.encode("latin-1") if domain else MISSING_DOMAIN,
    )


def _mailbox(toks: list[Token]) -> Address | None:
    if all(k == "c" for k, _ in toks):
        return None  # empty list element, e.g. "a@b,,c@d"
    comment = next((v for k, v in reversed(toks) if k == "c" and v.strip(" \t\r\n")), None)
    kinds = [k for k, _ in toks]
    route: bytes | None = None
    if "<" in kinds:
        lt = kinds.index("<")
        gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(toks)
        name = _phrase(toks[:lt]) or comment
        inner = toks[lt + 1 : gt]
        colons = [i for i, t in enumerate(inner) if t[0] == ":"]
        if colons and inner[0][0] == "@":  # obsolete source route "@a,@b:"
            route = "".join(v or k for k, v in inner[: colons[-1]] if k != "c").encode("latin-1")
            inner = inner[colons[-1] + 1 :]
        mailbox, host = _addr_spec(inner)
    else:
        name = comment
        mailbox, host = _addr_spec(toks)
    return (name.encode("latin-1") if name else None, route or None, mailbox, host)


# Fast path for the usual `a@b`, `Name <a@b>` and `"Name" <a@b>` items: when it
# matches, the full tokenizer would give the same result (tests check this).
_NOT_SIMPLE = re.compile(r"[()\[\]:;\\]")
# Possessive quantifiers: name and whitespace runs overlap, and backtracking
# between them would be quadratic on long runs of spaces.
_SIMPLE_ITEM = re.compile(
    r"""[ \t\r\n]*+(?:
          (?:"([^"\\]*+)"[ \t\r\n]*+|([^<>@,"]*+))<([^<>@,\s"]++)@([^<>@,\s"]++)>
         |([^<>@,\s"]++)@([^<>@,\s"]++)
        )?[ \t\r\n]*+(?:,|\Z)""",
    re.VERBOSE,
)


def _simple_addresses(s: str) -> list[Address] | None:
    out: list[Address] = []
    pos, n = 0, len(s)
    while pos < n:
        m = _SIMPLE_ITEM.match(s, pos)
        if m is None:
            return None
        pos = m.end()
        quoted, name, mailbox, host, bare_mailbox, bare_host = m.groups()
        if bare_mailbox is not None:
            out.append((None, None, bare_mailbox.encode("latin-1"), bare_host.encode("latin-1")))
        elif mailbox is not None:
            phrase = quoted if quoted is not None else _collapse(name)
            out.append(
                (
                    phrase.encode("latin-1") or None,
                    None,
                    mailbox.encode("latin-1"),
                    host.encode("latin-1"),
                )
            )
    return out


def parse_addresses(value: bytes) -> list[Address]:
    """Parse an address-list (with groups) into IMAP ENVELOPE address tuples.

    Never raises: anything unparseable degrades into placeholder addresses.
    """
    s = value.decode("latin-1")
    if _NOT_SIMPLE.search(s) is None and (simple := _simple_addresses(s)) is not None:
        return simple
    return _parse_addresses(s)


def _parse_addresses(s: str) -> list[Address]:
    out: list[Address] = []
    cur: list[Token] = []
    in_angle = in_group = False

    def flush() -> None:
        addr = _mailbox(cur)
        if addr is not None:
            out.append(addr)
        cur.clear()

    for tok in tokenize(s):
        kind = tok[0]
        if in_angle:
            in_angle = kind != ">"
            cur.append(tok)
        elif kind == "<":
            in_angle = True
            cur.append(tok)
        elif kind == ",":
            flush()
        elif kind == ":" and not in_group and all(k != "@" for k, _ in cur):
            out.append((None, None, _phrase(cur).encode("latin-1"), None))
            cur.clear()
            in_group = True
        elif kind == ";":
            flush()
            if in_group:
                out.append(GROUP_END)
                in_group = False
        else:
            cur.append(tok)
    flush()
    if in_group:
        out.append(GROUP_END)
    return out


# --- RFC 2045 / 2231 parameters ----------------------------------------------
_TYPE = re.compile(r"[ \t\r\n]*([^ \t\r\n/;()\"]*)[ \t\r\n]*(?:/[ \t\r\n]*([^ \t\r\n;()\"]*))?")
_PARAM = re.compile(
    r"""[ \t\r\n]*(?P<attr>[^ \t\r\n=;"()]+)[ \t\r\n]*=[ \t\r\n]*
        (?:"(?P<q>[^"\\]*(?:\\.[^"\\]*)*)"?|(?P<t>[^;"]*))""",
    re.VERBOSE | re.DOTALL,
)
_COMMENT = re.compile(r"\([^()]*\)")
_MIME_TOKEN = re.compile(r"[ \t\r\n]*([^ \t\r\n;()\"]+)")


def _strip_comments(s: str) -> str:
    return _COMMENT.sub(" ", s) if "(" in s else s


def _params(s: str, pos: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    while (semi := s.find(";", pos)) >= 0:
        m = _PARAM.match(s, semi + 1)
        if m is None:
            pos = semi + 1
            continue
        if m.group("q") is not None:
            value = _UNESCAPE.sub(r"\1", m.group("q"))
        else:  # lenient: unquoted values with spaces are common in the wild
            value = _collapse(_strip_comments(m.group("t")))
        out.append((m.group("attr"), value))
        pos = m.end()
    return _merge_rfc2231(out)


def _merge_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join RFC 2231 continuations; extended values keep their charset'lang' prefix.

    Like Dovecot, merged params come after the plain ones and an extended
    result is named "attr*".
    """
    if all("*" not in name for name, _ in params):
        return params
    plain: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for name, value in params:
        base, star, rest = name.partition("*")
        if not star:
            plain.append((name, value))
            continue
        digits = rest.removesuffix("*")
        if rest == "":
            sections.setdefault(base.lower(), []).append((0, True, value))
        elif digits.isascii() and digits.isdigit() and len(digits) < 6 and rest.count("*") <= 1:
            sections.setdefault(base.lower(), []).append((int(digits), rest.endswith("*"), value))
        else:
            plain.append((name, value))
    merged = []
    originals = {n.partition("*")[0].lower(): n.partition("*")[0] for n, _ in params}
    for key, segs in sections.items():
        segs.sort(key=lambda seg: seg[0])
        if any(ext for _, ext, _ in segs):
            value = "".join(v if ext else v.replace("%", "%25") for _, ext, v in segs)
            merged.append((originals[key] + "*", value))
        else:
            merged.append((originals[key], "".join(v for _, _, v in segs)))
    return plain + merged


def _enc(s: str) -> bytes:
    return s.encode("latin-1")


def parse_content_type(value: bytes) -> tuple[bytes, bytes, list[Param]]:
    """(type, subtype, params) as sent; type or subtype is b"" when malformed."""
    s = value.decode("latin-1")
    m = _TYPE.match(s)
    assert m is not None  # every group is optional
    params = [(_enc(a), _enc(v)) for a, v in _params(s, m.end())]
    return _enc(m.group(1)), _enc(m.group(2) or ""), params


def parse_disposition(value: bytes) -> tuple[bytes, list[Param]]:
    s = value.decode("latin-1")
    m = _MIME_TOKEN.match(s)
    kind = m.group(1) if m else ""
    return _enc(kind), [(_enc(a), _enc(v)) for a, v in _params(s, 0)]


def first_token(value: bytes) -> bytes | None:
    """First MIME token, e.g. the Content-Transfer-Encoding mechanism."""
    m = _MIME_TOKEN.match(value.decode("latin-1"))
    return _enc(m.group(1)) if m else None


def language_list(value: bytes) -> list[bytes]:
    s = _strip_comments(value.decode("latin-1"))
    return [_enc(tag) for part in s.split(",") if (tag := part.strip(' \t\r\n"'))]


def get_param(params: list[Param], name: bytes) -> bytes | None:
    for key, value in params:
        if key.lower() == name:
            return value
    return None


_MESSAGE_ID_VALUE = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)")


def message_id_of(message: bytes) -> str:
    """The Message-ID of a whole message, without its <>, for the mail log
    (empty if it has none)."""
    m = _BLANK_LINE.search(message)
    header = message[: m.start() + 1] if m else message
    found = _MESSAGE_ID_VALUE.search(header)
    if found is None:
        return ""
    value = b" ".join(found.group(1).split()).decode("utf-8", "replace")
    return value.strip().removeprefix("<").removesuffix(">")[:998]

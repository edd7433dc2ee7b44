"""IMAP string atoms (RFC 3501 §4.3): NIL, quoted strings and literals."""

from __future__ import annotations

import re

# Quoted strings cannot carry CR, LF, NUL or 8-bit bytes; those need a literal.
_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")
_SPECIAL = b'\x00\r\n"\\' + bytes(range(0x80, 0x100))
_REPLACEMENT = "\ufffd".encode()


def imap_quote(value: bytes | str | None) -> bytes:
    """Render ``value`` as an IMAP nstring: NIL, a quoted string or a literal.

    ``str`` is sent as UTF-8. NUL is not allowed even inside a literal
    (RFC 3501 CHAR8), so it becomes U+FFFD, as Dovecot does.
    """
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        try:  # round-trips text that was decoded with surrogateescape
            value = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace")
    if len(value.translate(None, _SPECIAL)) == len(value):  # fast path: plain ASCII
        return b'"' + value + b'"'
    if _NEEDS_LITERAL.search(value) is not None:
        if b"\x00" in value:
            value = value.replace(b"\x00", _REPLACEMENT)
        return b"{%d}\r\n%b" % (len(value), value)
    if b"\\" in value or b'"' in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def human(value: bytes) -> bytes:
    """Collapse whitespace runs (folding included) into single spaces and trim.

    Used for subjects and display names so that a folded header does not
    turn into a literal for no reason.
    """
    return b" ".join(value.split())

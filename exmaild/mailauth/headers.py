"""Header-section helpers over raw bytes: find the header block, read a
field, drop fields. No full MIME parse: the checks need a few fields and the
exact octets of everything else."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from email.header import decode_header, make_header
from email.utils import getaddresses

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section with its last line ending, the rest: blank line and body)."""
    if message.startswith((b"\r\n", b"\n")):
        return b"", message
    end = _HEADER_END.search(message)
    if end is None:
        return message, b""
    cut = end.start() + (2 if message[end.start()] == 13 else 1)
    return message[:cut], message[cut:]


def fields(header: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, raw field with continuation lines and line endings) in order."""
    lines = header.splitlines(keepends=True)
    current: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            raw = b"".join(current)
            yield raw.split(b":", 1)[0].strip(), raw
        current = [line]
    if current:
        raw = b"".join(current)
        yield raw.split(b":", 1)[0].strip(), raw


def drop_fields(header: bytes, unwanted: Callable[[bytes, bytes], bool]) -> tuple[bytes, int]:
    """The header section without the fields `unwanted(name, raw)` picks; how many."""
    kept, dropped = [], 0
    for name, raw in fields(header):
        if unwanted(name, raw):
            dropped += 1
        else:
            kept.append(raw)
    return b"".join(kept), dropped


def field_values(header: bytes, name: str) -> list[str]:
    """Unfolded values of every field called `name` (case-insensitive)."""
    want = name.lower().encode()
    out = []
    for n, raw in fields(header):
        if n.lower() == want:
            value = raw.split(b":", 1)[1] if b":" in raw else b""
            out.append(re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace")).strip())
    return out


def from_addresses(header: bytes) -> list[tuple[str, str]]:
    """(display name, address) of every mailbox in the From: fields."""
    values = field_values(header, "From")
    out = []
    for name, addr in getaddresses(values):
        if addr:
            out.append((_decode_words(name), addr))
    return out


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().strip("<>").lower().rstrip(".")

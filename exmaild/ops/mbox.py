"""mbox files: reading (mboxrd and mboxo) for import, writing (mboxrd) for export.

A message starts at a `From ` line that opens the file or follows an empty
line; the empty line before the next `From ` line is the separator, not part
of the message. mboxrd quotes any body line matching `>*From ` with one more
`>`, which reading removes again. Flags travel in `Status:` (R seen),
`X-Status:` (A answered, F flagged, T draft, D deleted) and `X-Keywords:`
headers, which are taken out of the message on import and put in on export,
so a message goes through an export and import byte for byte as it was
(mail is kept with CRLF line ends, the file has LF ones).
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from exmaild.store import flags as fl

_QUOTED_FROM = re.compile(rb"^>+From ")
_STATUS_HEADERS = (b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase")
_X_STATUS = {"A": fl.ANSWERED, "F": fl.FLAGGED, "T": fl.DRAFT, "D": fl.DELETED}
_X_LETTERS = sorted((bit, letter) for letter, bit in _X_STATUS.items())


@dataclass(frozen=True)
class MboxMessage:
    raw: bytes | None  # CRLF line ends; None when it was larger than the limit
    flags: int
    keywords: tuple[str, ...]
    internal_date: int | None
    size: int  # bytes read from the file


def _from_date(line: bytes) -> int | None:
    """The date of a `From sender Thu Jan  1 00:00:00 1970` line, as Unix time (UTC)."""
    words = [w for w in line.decode("ascii", "replace").split()[2:]
             if not re.fullmatch(r"[+-]\d{4}", w)]  # a zone some writers put in
    for start in range(len(words) - 4):
        try:
            return calendar.timegm(
                time.strptime(" ".join(words[start : start + 5]), "%a %b %d %H:%M:%S %Y"))
        except ValueError:
            continue
    return None


def _header_date(raw: bytes) -> int | None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"^Date:[ \t]*(.*(?:\r\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    if not m:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(
            m[1].decode("ascii", "replace").replace("\r\n", "")).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def _split_status(lines: list[bytes]) -> tuple[list[bytes], int, tuple[str, ...]]:
    """Take the flag headers out of the header block; (lines, mask, keywords)."""
    mask = 0
    keywords: list[str] = []
    out: list[bytes] = []
    in_header = True
    skipping = False
    for line in lines:
        if in_header:
            if line in (b"\n", b"\r\n"):
                in_header = False
            elif skipping and line[:1] in (b" ", b"\t"):
                continue
            else:
                skipping = False
                name, colon, value = line.partition(b":")
                if colon and name.strip().lower() in _STATUS_HEADERS:
                    skipping = True
                    text = value.decode("ascii", "replace").strip()
                    key = name.strip().lower()
                    if key == b"status" and "R" in text:
                        mask |= fl.SEEN
                    elif key == b"x-status":
                        for ch in text:
                            mask |= _X_STATUS.get(ch, 0)
                    elif key == b"x-keywords":
                        for k in re.split(r"[\s,]+", text):
                            if k and k not in keywords:
                                keywords.append(k)
                    continue
        out.append(line)
    return out, mask, tuple(keywords)


def _finish(lines: list[bytes], from_line: bytes, size: int, too_big: bool) -> MboxMessage:
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]  # the separator before the next From_ line
    date = _from_date(from_line)
    if too_big:
        return MboxMessage(None, 0, (), date, size)
    lines, mask, keywords = _split_status(lines)
    body = b"".join(_QUOTED_FROM.sub(lambda m: m[0][1:], ln) for ln in lines)
    raw = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if date is None:
        date = _header_date(raw)
    return MboxMessage(raw, mask, keywords, date, size)


def read(f: BinaryIO, limit: int) -> Iterator[MboxMessage]:
    """The messages of an mbox file, one at a time: at most `limit` bytes of
    one message are held (a larger one comes back with raw=None)."""
    lines: list[bytes] = []
    from_line = b""
    held = size = 0
    too_big = False
    started = False
    prev_blank = True
    for line in f:
        if line.startswith(b"From ") and prev_blank:
            if started:
                yield _finish(lines, from_line, size, too_big)
            started, from_line, lines, held, size, too_big = True, line, [], 0, 0, False
            prev_blank = False
            continue
        prev_blank = line in (b"\n", b"\r\n")
        if not started:
            if not prev_blank:
                raise ValueError("not an mbox file: it does not start with a From_ line")
            continue
        size += len(line)
        if not too_big:
            held += len(line)
            if held > limit + 2:  # + the separator line
                too_big, lines = True, []
            else:
                lines.append(line)
    if started:
        yield _finish(lines, from_line, size, too_big)


def write(f: BinaryIO, raw: bytes, flags: int, keywords: Sequence[str], internal_date: int,
          sender: str = "MAILER-DAEMON") -> None:
    """Append one message in mboxrd form, with its flags in Status headers."""
    lf = raw.replace(b"\r\n", b"\n")
    head, sep, body = lf.partition(b"\n\n")
    if not sep:
        head, body = lf.rstrip(b"\n"), b""
    status = b"Status: " + (b"RO" if flags & fl.SEEN else b"O") + b"\n"
    xs = "".join(letter for bit, letter in _X_LETTERS if flags & bit)
    if xs:
        status += b"X-Status: " + xs.encode() + b"\n"
    if keywords:
        status += b"X-Keywords: " + " ".join(keywords).encode("utf-8") + b"\n"
    msg = head + b"\n" + status + (b"\n" + body if sep else b"")
    if not msg.endswith(b"\n"):
        msg += b"\n"
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(internal_date))
    f.write(f"From {sender} {stamp}\n".encode())
    for line in msg.splitlines(keepends=True):
        f.write(b">" + line if _QUOTED_FROM.match(b">" + line) else line)
    f.write(b"\n")

"""The whole decoded text of a message, for SEARCH BODY and TEXT.

Every text/* leaf counts, wherever it sits: the body, text attachments
(text/plain, text/csv, text/html reduced to text ...) and the parts of an
attached message/rfc822, whose header block is body text of the outer
message too. Transfer encodings and charsets are decoded as for the excerpt.
Of a multipart/alternative every alternative is taken unless its words are
those of one already taken (the usual plain + HTML pair says the same thing
twice; indexing both would double the index for no new match).

The result is capped at ``limit`` characters; ingest stores it once per
content (``content_text``) and the search index is built over it.
"""

from __future__ import annotations

from exmaild.mailstore import rfc822
from exmaild.mailstore.mime_struct import MESSAGE, MULTIPART, Part, parse_tree
from exmaild.mailstore.textdecode import decode_body, decode_header, html_to_text

__all__ = ["message_text"]

# Raw bytes worth decoding per character still wanted: base64 (4/3) of 4-byte
# UTF-8 with line breaks, or quoted-printable (3 per byte) of 3-byte CJK.
_RAW_PER_CHAR = 12


def message_text(raw: bytes, limit: int, root: Part | None = None) -> str:
    """Decoded text of ``raw``'s text parts, at most ``limit`` characters.

    Total like the parser: malformed MIME gives a best effort, never an error.
    """
    if limit <= 0:
        return ""
    collector = _Collector(raw, limit)
    collector.walk(parse_tree(raw) if root is None else root, collector.texts)
    text = "\n".join(collector.texts)[:limit]
    return text.replace("\x00", "") if "\x00" in text else text  # PostgreSQL refuses NUL


class _Collector:
    def __init__(self, raw: bytes, limit: int) -> None:
        self.raw = raw
        self.left = limit
        self.texts: list[str] = []

    def add(self, out: list[str], text: str) -> None:
        if text:
            out.append(text)
            self.left -= len(text) + 1

    def walk(self, part: Part, out: list[str]) -> None:
        if self.left <= 0:
            return
        if part.kind == MESSAGE:
            inner = part.children[0]
            lines = [f"{n.decode('latin-1')}: {decode_header(v)}" for n, v in inner.field_list]
            self.add(out, "\n".join(" ".join(line.split()) for line in lines))
            self.walk(inner, out)
        elif part.kind == MULTIPART:
            if part.subtype.lower() == b"alternative":
                self._alternatives(part, out)
            else:
                for child in part.children:
                    self.walk(child, out)
        elif part.is_text:
            self.add(out, self._decode(part))

    def _alternatives(self, part: Part, out: list[str]) -> None:
        seen: set[str] = set()
        for child in part.children:
            before = self.left
            texts: list[str] = []
            self.walk(child, texts)
            words = " ".join(" ".join(texts).split())
            if words in seen:
                self.left = before  # a duplicate costs nothing of the cap
                continue
            seen.add(words)
            out.extend(texts)

    def _decode(self, part: Part) -> str:
        end = part.end
        budget = self.left * _RAW_PER_CHAR + 64
        if end - part.body_start > budget:
            # Cut at a line end: base64 stays in whole groups and a multibyte
            # character is not split (which would send decoding to a guess).
            cut = self.raw.rfind(b"\n", part.body_start, part.body_start + budget)
            end = cut + 1 if cut > part.body_start else part.body_start + budget
        charset = rfc822.get_param(part.params, b"charset")
        text = decode_body(
            self.raw[part.body_start : end],
            part.cte(),
            charset.decode("latin-1") if charset else None,
        )
        if part.subtype.lower() == b"html":
            text = html_to_text(text)
        return text.replace("\r\n", "\n").strip()

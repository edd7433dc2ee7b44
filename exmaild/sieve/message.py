"""What a script sees of one message: envelope, header fields, body, size.

Built from the stored bytes without copying the body; the decoded body text
is made only if a `body` test asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from exmaild.mailstore import rfc822
from exmaild.mailstore.textdecode import decode_header


@dataclass
class MessageContext:
    envelope_from: str
    envelope_to: str
    size: int
    fields: list[tuple[str, str]]  # (lower-cased name, raw unfolded value)
    body_text: Callable[[], str] = lambda: ""
    body_raw: Callable[[], str] = lambda: ""
    flags: frozenset[str] = frozenset()
    mime_tree: Callable[[], Any] = lambda: None  # the parsed MIME tree (mime_struct.Part)
    _decoded: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes, *, envelope_from: str, envelope_to: str,
                   head: bytes = b"", start: int = 0) -> MessageContext:
        """The message `head + data[start:]`; `data` may be a spool's mmap:
        only its header section is copied (the body when a test reads it)."""
        end = rfc822.header_end(data, start, len(data))
        block = head + bytes(data[start:end])
        fields = [(n.decode("latin-1").lower(), v.decode("utf-8", "replace"))
                  for n, v in rfc822.parse_fields(block)]
        cache: dict[str, str] = {}

        def raw_body() -> str:
            if "raw" not in cache:
                cache["raw"] = bytes(data[end:]).decode("utf-8", "replace")
            return cache["raw"]

        def tree() -> Any:
            if "tree" not in cache:
                from exmaild.mailstore.mime_struct import parse_tree

                cache["tree"] = parse_tree(bytes(data), head=head, start=start)
            return cache["tree"]

        def text() -> str:
            if "text" not in cache and _plain_text(fields):
                # One text/plain part in 7bit/8bit: its body is the text (no
                # MIME parse; most mail a rule reads is like this).
                cache["text"] = raw_body()
            if "text" not in cache:
                from exmaild.mailstore.mime_struct import parse_tree
                from exmaild.mailstore.searchtext import message_text

                whole = bytes(data)
                cache["text"] = message_text(whole, 1 << 20, parse_tree(whole, start=start))
            return cache["text"]

        return cls(envelope_from, envelope_to, len(head) + len(data) - start, fields,
                   text, raw_body, mime_tree=tree)  # type: ignore[arg-type]

    def for_recipient(self, envelope_to: str) -> MessageContext:
        """The same message for another recipient (parsed fields shared)."""
        return MessageContext(self.envelope_from, envelope_to, self.size, self.fields,
                              self.body_text, self.body_raw, self.flags, self.mime_tree,
                              self._decoded)

    def raw_headers(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.fields if k == n]

    def headers(self, name: str) -> list[str]:
        """Values of a header field, RFC 2047 decoded."""
        n = name.lower()
        got = self._decoded.get(n)
        if got is None:
            got = [decode_header(v.encode("utf-8")) if "=?" in v else v
                   for v in self.raw_headers(n)]
            self._decoded[n] = got
        return got

    def mime_headers(self, names: list[str], option: str, params: list[str],
                     anychild: bool) -> list[str]:
        """RFC 5703 `header :mime`: the values of `names` in the top-level
        part, or in every part with :anychild, decoded (RFC 2047/2231).
        option: "" (the whole value), "type", "subtype", "contenttype" or
        "param" (the values of `params`, e.g. an attachment's filename)."""
        root = self.mime_tree()
        if root is None:
            return []
        out: list[str] = []
        wanted = [n.lower().encode("latin-1", "replace") for n in names]
        keys = {p.lower() for p in params}
        for part in (_parts(root) if anychild else iter([root])):
            for name, value in part.field_list:
                if name.lower() not in wanted:
                    continue
                if option == "":
                    out.append(decode_header(value).strip())
                    continue
                mtype, sub, _ = rfc822.parse_content_type(value)
                if option == "type":
                    out.append(mtype.decode("latin-1").lower())
                elif option == "subtype":
                    out.append(sub.decode("latin-1").lower())
                elif option == "contenttype":
                    out.append((mtype + b"/" + sub).decode("latin-1").lower())
                else:
                    out.extend(v for k, v in _decoded_params(value) if k in keys)
        return out

    def addresses(self, name: str) -> list[str]:
        """The addresses (local@domain) in a header field's values."""
        key = "\0" + name.lower()  # beside the decoded values, apart from them
        got = self._decoded.get(key)
        if got is None:
            got = self._decoded[key] = self._addresses(name)
        return got

    def _addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for v in self.raw_headers(name):
            for _n, _adl, mbox, host in rfc822.parse_addresses(v.encode("utf-8")):
                if mbox is None:
                    continue
                local = mbox.decode("utf-8", "replace")
                if host is None or host == rfc822.MISSING_DOMAIN:
                    out.append(local)
                else:
                    out.append(f"{local}@{host.decode('utf-8', 'replace')}")
        return out


def _plain_text(fields: list[tuple[str, str]]) -> bool:
    """A single text/plain body in UTF-8 or ASCII, not transfer-encoded."""
    ctype = next((v for n, v in fields if n == "content-type"), "")
    cte = next((v for n, v in fields if n == "content-transfer-encoding"), "")
    kind, _, params = ctype.partition(";")
    if kind.strip().lower() not in ("", "text/plain"):
        return False
    if cte.strip().lower() not in ("", "7bit", "8bit"):
        return False
    charset = ""
    low = params.lower()
    if "charset" in low:
        charset = low.split("charset", 1)[1].lstrip(" =").split(";")[0].strip().strip('"')
    return charset in ("", "us-ascii", "utf-8", "utf8")


def _parts(root: Any) -> Iterator[Any]:
    """Every part of the tree, the root first (a MAX_PARTS-bounded tree)."""
    from exmaild.mailstore.mime_struct import MESSAGE, MULTIPART

    stack = [root]
    while stack:
        part = stack.pop()
        yield part
        if part.kind in (MULTIPART, MESSAGE):
            stack.extend(reversed(part.children))


def _decoded_params(value: bytes) -> list[tuple[str, str]]:
    """(lower-cased name, decoded value) of a MIME field's parameters: RFC
    2231 extended values (`filename*=UTF-8''...`, continuations joined) and
    RFC 2047 words inside quoted values (what most mailers send)."""
    from exmaild.mailstore.textdecode import decode_rfc2231

    out: list[tuple[str, str]] = []
    for k, v in rfc822.parse_content_type(value)[2]:
        name = k.lower()
        if name.endswith(b"*"):
            out.append((name[:-1].decode("latin-1"), decode_rfc2231(v)))
        else:
            out.append((name.decode("latin-1"), decode_header(v)))
    return out

"""The one exception type the IMAP parsing layer raises for bad input."""

from __future__ import annotations

__all__ = ["ADVERTISED_CHARSETS", "BadCharsetError", "ParseError"]

# Charsets named in the BADCHARSET response code; more are accepted.
ADVERTISED_CHARSETS = ("UTF-8", "US-ASCII", "GB18030", "GBK", "GB2312")


class ParseError(Exception):
    """Input that is not a valid command.

    The server answers ``<tag> <status> [<code>] <message>``, with ``*`` for
    the tag when ``tag`` is None (the tag itself could not be read).
    """

    status = "BAD"

    def __init__(self, message: str, code: str | None = None, *, tag: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.tag = tag

    def response(self) -> str:
        """The whole response line, without CRLF."""
        code = f"[{self.code}] " if self.code else ""
        return f"{self.tag or '*'} {self.status} {code}{self.message}"


class InvalidMailboxName(ParseError):
    """A mailbox name that does not decode (bad modified UTF-7, a control
    character): the command was well formed, so NO, not BAD (RFC 3501 §7.1)."""

    status = "NO"


class BadCharsetError(ParseError):
    """SEARCH named a charset we cannot decode: answered with NO, not BAD."""

    status = "NO"

    def __init__(self, charset: str, *, tag: str | None = None) -> None:
        code = "BADCHARSET (" + " ".join(ADVERTISED_CHARSETS) + ")"
        super().__init__(f"Unsupported charset {ascii(charset[:40])}", code, tag=tag)
        self.charset = charset

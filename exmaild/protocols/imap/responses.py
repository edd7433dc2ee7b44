"""Server responses: tagged results, untagged data and their fixed texts.

Command modules return a ``Result`` (the tagged completion) and write
untagged data through the helpers here, so response wording lives in one
place instead of scattered literals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exmaild.store import flags as fl

from .encode import encode_mailbox, format_flag_list

CRLF = b"\r\n"
OK, NO, BAD = "OK", "NO", "BAD"

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
PERMANENT_EXTRA = "\\*"  # new keywords may be created


@dataclass(frozen=True)
class Result:
    """A command's tagged completion: ``<tag> <status> [<code>] <text>``."""

    status: str
    text: str
    code: str | None = None

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "replace")


def ok(text: str, code: str | None = None) -> Result:
    return Result(OK, text, code)


def no(text: str, code: str | None = None) -> Result:
    return Result(NO, text, code)


def bad(text: str, code: str | None = None) -> Result:
    return Result(BAD, text, code)


# The handler already wrote its tagged line (LOGOUT, STARTTLS).
SENT = Result("SENT", "")

# -- fixed results --------------------------------------------------------------
NOT_AUTHENTICATED = bad("Log in first")
ALREADY_AUTHENTICATED = bad("Already logged in")
NO_MAILBOX_SELECTED = bad("No mailbox selected")
AUTH_FAILED = no("Authentication failed", "AUTHENTICATIONFAILED")
PRIVACY_REQUIRED = no("Log in only after STARTTLS", "PRIVACYREQUIRED")
IMAP_DISABLED = no(
    "IMAP access is switched off for this account; turn on the IMAP/SMTP service "
    "in the mailbox's client settings, then try again",
    "ALERT",
)
NONEXISTENT = no("Mailbox does not exist", "NONEXISTENT")
TRYCREATE = no("Mailbox does not exist", "TRYCREATE")
OVERQUOTA = no("Quota exceeded: delete some mail or ask for more space", "OVERQUOTA")
READ_ONLY = no("Mailbox is open read-only", "READ-ONLY")
SERVER_BUG = no("Internal error, the command was not completed; try again", "SERVERBUG")
UNAVAILABLE = no("Mail storage is temporarily unavailable; try again", "UNAVAILABLE")
STORAGE_FULL = no("Insufficient system storage; try again later", "UNAVAILABLE")
INVALID_SET = bad("Invalid message sequence set: no such message")


# -- untagged data -----------------------------------------------------------------
def untagged(text: str | bytes) -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    return b"* " + text + CRLF


def untagged_ok(text: str, code: str | None = None) -> bytes:
    return untagged(f"OK [{code}] {text}" if code else f"OK {text}")


def bye(text: str) -> bytes:
    return untagged(f"BYE {text}")


def untagged_bad(text: str) -> bytes:
    return untagged(f"BAD {text}")


def continuation(text: str = "Ready for literal data") -> bytes:
    return b"+ " + text.encode("ascii") + CRLF


def capability(caps: Iterable[str]) -> bytes:
    return untagged("CAPABILITY " + " ".join(caps))


def exists(n: int) -> bytes:
    return b"* %d EXISTS\r\n" % n


def recent(n: int) -> bytes:
    return b"* %d RECENT\r\n" % n


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def flags_list(names: Iterable[str]) -> bytes:
    return format_flag_list(names)


def list_line(
    kind: str, attributes: Iterable[str], name: str, extra: bytes = b"", *, utf8: bool = False
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" "name"`` (also LSUB / XLIST)."""
    attrs = " ".join(attributes).encode("ascii")
    shown = encode_mailbox(name, utf8=utf8)
    return b"* %s (%s) \"/\" %s%s\r\n" % (kind.encode("ascii"), attrs, shown, extra)


class FlagFormatter:
    """``(\\Seen \\Flagged $Label1)`` for a bit mask + keywords, cached."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, bool], bytes] = {}

    def __call__(self, mask: int, keywords: str = "", recent: bool = False) -> bytes:
        key = (mask, keywords, recent)
        out = self._cache.get(key)
        if out is None:
            names = [n for n in fl.to_names(mask, keywords) if n.isascii()]
            if recent:
                names.append("\\Recent")
            out = format_flag_list(names)
            if len(self._cache) < 4096:
                self._cache[key] = out
        return out


format_flags = FlagFormatter()

"""Parsed commands: ``Command`` and the typed arguments of each command."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from .fetch import FetchItem
from .framing import LiteralSink
from .search_parser import SearchArgs
from .sequence import SequenceSet
from .sort import SortArgs, ThreadArgs

__all__ = [
    "AppendArgs",
    "AppendMessage",
    "CatPart",
    "AuthenticateArgs",
    "Command",
    "CommandArgs",
    "CompressArgs",
    "CopyArgs",
    "EnableArgs",
    "EventGroup",
    "FetchArgs",
    "IdArgs",
    "ListArgs",
    "LoginArgs",
    "MailboxArgs",
    "NotifyArgs",
    "QresyncParams",
    "QuotaArgs",
    "RenameArgs",
    "SelectArgs",
    "SequenceArgs",
    "StatusArgs",
    "StoreArgs",
    "StoreMode",
]


@dataclass(frozen=True)
class AuthenticateArgs:
    """``initial_response`` is the decoded SASL-IR (``b""`` for ``=``)."""

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True)
class LoginArgs:
    """Decoded as UTF-8 with ``surrogateescape``: ``.encode("utf-8",
    "surrogateescape")`` gives back the exact bytes the client sent."""

    username: str
    password: str


@dataclass(frozen=True)
class MailboxArgs:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT; ``uses``: the
    special-use attributes of ``CREATE ... (USE (...))`` (RFC 6154)."""

    mailbox: str
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class QresyncParams:
    """SELECT's ``QRESYNC (uidvalidity modseq [known-uids] [seq-match])``
    (RFC 7162 §3.2.5); ``seq_match`` is (known sequence numbers, their UIDs)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class SelectArgs:
    """SELECT and EXAMINE; ``condstore`` for the ``(CONDSTORE)`` parameter."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class RenameArgs:
    old: str
    new: str


@dataclass(frozen=True)
class ListArgs:
    """LIST, LSUB and XLIST.  ``extended`` is true when RFC 5258 syntax was
    used (selection options, several patterns or RETURN), which changes how
    the server must answer.  Options are upper-cased; ``status_items`` are
    those of ``RETURN (STATUS (...))``."""

    reference: str
    patterns: tuple[str, ...]
    selection_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class CatPart:
    """CATENATE (RFC 4469): ``TEXT`` octets or an IMAP ``URL`` to copy from."""

    text: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class AppendMessage:
    """One more message of a MULTIAPPEND (RFC 3502)."""

    flags: tuple[str, ...]
    internal_date: datetime | None
    message: bytes | LiteralSink
    catenate: tuple[CatPart, ...] = ()  # then ``message`` is b"" until built


@dataclass(frozen=True)
class AppendArgs:
    mailbox: str
    flags: tuple[str, ...]
    internal_date: datetime | None
    message: bytes | LiteralSink  # a spool, closed by the server after the command
    more: tuple[AppendMessage, ...] = ()  # MULTIAPPEND: the second message on
    catenate: tuple[CatPart, ...] = ()  # the first message's CATENATE parts


@dataclass(frozen=True)
class IdArgs:
    """``params`` is None for ``ID NIL``; values may be None (NIL)."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class EnableArgs:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class CompressArgs:
    mechanism: str  # upper-cased; only DEFLATE is supported


@dataclass(frozen=True)
class EventGroup:
    """One NOTIFY event group (RFC 5465)."""

    filter: str  # upper-cased: SELECTED, PERSONAL, SUBTREE...
    mailboxes: tuple[str, ...] = ()  # SUBTREE / MAILBOXES
    events: tuple[str, ...] = ()  # () for NONE
    fetch: tuple[FetchItem, ...] = ()  # MessageNew's attributes


@dataclass(frozen=True)
class NotifyArgs:
    groups: tuple[EventGroup, ...] = ()
    status: bool = False
    none: bool = False  # NOTIFY NONE


@dataclass(frozen=True)
class QuotaArgs:
    """GETQUOTA's quota root."""

    root: str


@dataclass(frozen=True)
class SequenceArgs:
    """UID EXPUNGE's UID set."""

    sequence_set: SequenceSet


@dataclass(frozen=True)
class FetchArgs:
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False  # RFC 7162 UID FETCH modifier


class StoreMode(enum.Enum):
    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True)
class StoreArgs:
    sequence_set: SequenceSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class CopyArgs:
    """COPY and MOVE."""

    sequence_set: SequenceSet
    mailbox: str


CommandArgs = (
    AuthenticateArgs
    | LoginArgs
    | MailboxArgs
    | SelectArgs
    | RenameArgs
    | ListArgs
    | StatusArgs
    | AppendArgs
    | IdArgs
    | EnableArgs
    | CompressArgs
    | NotifyArgs
    | QuotaArgs
    | SequenceArgs
    | FetchArgs
    | StoreArgs
    | CopyArgs
    | SearchArgs
    | SortArgs
    | ThreadArgs
)


@dataclass(frozen=True)
class Command:
    """One parsed command.  ``name`` is upper-cased and never ``UID``: ``UID
    FETCH`` is ``name="FETCH", uid=True``.  ``args`` is None for commands
    without arguments (NOOP, IDLE, plain EXPUNGE...)."""

    tag: str
    name: str
    uid: bool = False
    args: CommandArgs | None = None

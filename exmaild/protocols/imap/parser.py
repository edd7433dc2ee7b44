"""Parse one framed command unit into a ``Command`` (RFC 3501 + extensions).

Entry points: ``parse_command(unit)`` for units from the ``Framer``, and
``parse_bytes(data)`` for a complete command given as bytes (tests, tools).
``ParseError`` is the only exception raised for bad input.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from . import notify
from .commands import (
    AppendArgs,
    AppendMessage,
    AuthenticateArgs,
    CatPart,
    Command,
    CommandArgs,
    CompressArgs,
    CopyArgs,
    EnableArgs,
    FetchArgs,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    QresyncParams,
    QuotaArgs,
    RenameArgs,
    SelectArgs,
    SequenceArgs,
    StatusArgs,
    StoreArgs,
    StoreMode,
)
from .errors import ParseError
from .fetch import parse_fetch_items
from .framing import CommandUnit, Framer, FramerLimits
from .search_parser import SearchArgs, parse_search
from .sequence import read_sequence_set
from .sort import SortArgs, ThreadArgs, parse_sort, parse_thread
from .tokens import MAX_MODSEQ, Reader, decode_mailbox, parse_date_time

__all__ = ["UID_COMMANDS", "decode_sasl_response", "parse_bytes", "parse_command"]

UID_COMMANDS = frozenset(
    {"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT", "THREAD"}
)
NO_ARG_COMMANDS = frozenset(
    {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "NAMESPACE", "IDLE"}
)
STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
     "SIZE", "MAILBOXID", "DELETED"}  # RFC 8438, RFC 8474, RFC 9051
)
LIST_SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
DEFAULT_MAX_DEPTH = 32  # [limits] imap_nesting_depth


@dataclass(frozen=True)
class _Context:
    name: str
    uid: bool
    max_depth: int


_Handler = Callable[[Reader, _Context], CommandArgs | None]


def parse_command(
    unit: CommandUnit, *, max_depth: int = DEFAULT_MAX_DEPTH, utf8: bool = False
) -> Command:
    """Parse a unit; a ``ParseError`` carries the tag once it was read.
    ``utf8``: the session enabled UTF8=ACCEPT (mailbox names are UTF-8)."""
    reader = Reader(unit.lines, unit.literals)
    reader.utf8 = utf8
    tag = reader.tag()
    try:
        reader.sp()
        name = reader.keyword("command name")
        uid = name == "UID"
        if uid:
            reader.sp()
            name = reader.keyword("command name after UID")
            if name not in UID_COMMANDS:
                raise ParseError(f"UID {name[:20]} is not a command")
        handler = _HANDLERS.get(name)
        if handler is None:
            raise ParseError(f"Unknown command {name[:20]}")
        args = handler(reader, _Context(name, uid, max_depth))
        reader.expect_end()
    except ParseError as exc:
        exc.tag = tag
        raise
    return Command(tag, name, uid, args)


def parse_bytes(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Command:
    """Frame and parse exactly one complete command (CRLF optional at the end)."""
    if not data.endswith(b"\n"):
        data += b"\r\n"
    limits = FramerLimits(max_line_length=len(data), max_command_size=len(data))
    framer = Framer(limits, pausing_commands=frozenset())
    units = [e for e in framer.feed(data) if isinstance(e, CommandUnit)]
    if len(units) != 1 or framer.in_command:
        raise ParseError("Expected exactly one complete command")
    return parse_command(units[0], max_depth=max_depth)


def decode_sasl_response(line: bytes) -> bytes | None:
    """A client's AUTHENTICATE continuation line: None when it cancels (``*``)."""
    if line == b"*":
        return None
    return _base64(line)


# -- helpers ---------------------------------------------------------------


def _base64(raw: bytes) -> bytes:
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("Invalid base64") from None


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what.capitalize()} is not valid UTF-8") from None


def _options(reader: Reader, known: frozenset[str], what: str) -> list[str]:
    options = reader.paren_list(lambda: reader.keyword(what))
    for option in options:
        if option not in known:
            raise ParseError(f"Unsupported {what} {option[:40]}")
    return list(dict.fromkeys(options))


def _status_items(reader: Reader) -> tuple[str, ...]:
    items = _options(reader, STATUS_ITEMS, "status item")
    if not items:
        raise ParseError("Empty status item list")
    return tuple(items)


# -- per-command handlers -------------------------------------------------------


def _no_args(reader: Reader, ctx: _Context) -> None:
    return None


def _authenticate(reader: Reader, ctx: _Context) -> AuthenticateArgs:
    reader.sp()
    mechanism = reader.keyword("SASL mechanism")
    initial = None
    if reader.take(b" "):  # SASL-IR (RFC 4959); "=" is an empty response
        raw = reader.atom("initial response")
        initial = b"" if raw == b"=" else _base64(raw)
    return AuthenticateArgs(mechanism, initial)


def _login(reader: Reader, ctx: _Context) -> LoginArgs:
    reader.sp()
    user = reader.astring("user name")
    reader.sp()
    password = reader.astring("password")
    return LoginArgs(
        user.decode("utf-8", "surrogateescape"), password.decode("utf-8", "surrogateescape")
    )


def _mailbox(reader: Reader, ctx: _Context) -> MailboxArgs:
    reader.sp()
    return MailboxArgs(reader.mailbox())


def _create(reader: Reader, ctx: _Context) -> MailboxArgs:
    """``CREATE name [(USE (\\Archive))]`` (RFC 4466 parameters, RFC 6154)."""
    reader.sp()
    mailbox = reader.mailbox()
    uses: list[str] = []
    if reader.take(b" "):
        reader.expect(b"(", "(USE (...))")
        if reader.keyword("CREATE parameter") != "USE":
            raise ParseError("Unsupported CREATE parameter")
        reader.sp()
        uses = list(reader.flag_list())
        reader.expect(b")", ")")
        if not uses:
            raise ParseError("USE needs at least one special-use attribute")
    return MailboxArgs(mailbox, tuple(uses))


def _select(reader: Reader, ctx: _Context) -> SelectArgs:
    reader.sp()
    mailbox = reader.mailbox()
    condstore = False
    qresync: QresyncParams | None = None

    def param() -> str:
        nonlocal condstore, qresync
        word = reader.keyword(f"{ctx.name} parameter")
        if word == "CONDSTORE":
            condstore = True
        elif word == "QRESYNC":
            reader.sp()
            qresync = _qresync(reader)
        else:
            raise ParseError(f"Unsupported {ctx.name} parameter {word[:40]}")
        return word

    if reader.take(b" "):
        reader.paren_list(param)
    return SelectArgs(mailbox, condstore, qresync)


def _qresync(reader: Reader) -> QresyncParams:
    """``(uidvalidity SP modseq [SP known-uids] [SP "(" seqs SP uids ")"])``."""
    reader.expect(b"(", "(")
    uidvalidity = reader.number("UIDVALIDITY", nonzero=True)
    reader.sp()
    modseq = reader.number("mod-sequence", maximum=MAX_MODSEQ)
    known = None
    match = None
    while match is None and reader.take(b" "):
        if reader.take(b"("):
            seqs = read_sequence_set(reader)
            reader.sp()
            uids = read_sequence_set(reader)
            reader.expect(b")", ")")
            match = (seqs, uids)
        elif known is None:
            known = read_sequence_set(reader)
        else:
            raise ParseError("Expected the QRESYNC sequence match data")
    reader.expect(b")", ")")
    return QresyncParams(uidvalidity, modseq, known, match)


def _rename(reader: Reader, ctx: _Context) -> RenameArgs:
    reader.sp()
    old = reader.mailbox()
    reader.sp()
    return RenameArgs(old, reader.mailbox())


def _list(reader: Reader, ctx: _Context) -> ListArgs:
    extensible = ctx.name == "LIST"  # LSUB and XLIST keep the RFC 3501 form
    reader.sp()
    selection: list[str] = []
    extended = False
    if extensible and reader.peek() == 0x28:  # "("
        selection = _options(reader, LIST_SELECTION_OPTIONS, "LIST selection option")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 §3: never alone, nor with only REMOTE.
            raise ParseError("RECURSIVEMATCH needs another selection option")
        extended = True
        reader.sp()
    reference = reader.mailbox()
    reader.sp()
    if extensible and reader.peek() == 0x28:
        raw = reader.paren_list(reader.list_mailbox, allow_empty=False)
        extended = True
    else:
        raw = [reader.list_mailbox()]
    patterns = tuple(decode_mailbox(p, utf8=reader.utf8) for p in raw)
    returns: list[str] = []
    status: tuple[str, ...] = ()
    if extensible and reader.take(b" "):
        if reader.keyword("RETURN") != "RETURN":
            raise ParseError("Expected RETURN")
        reader.sp()
        returns, status = _list_return(reader)
        extended = True
    return ListArgs(reference, patterns, tuple(selection), tuple(returns), status, extended)


def _list_return(reader: Reader) -> tuple[list[str], tuple[str, ...]]:
    status: tuple[str, ...] = ()

    def option() -> str:
        nonlocal status
        word = reader.keyword("LIST return option")
        if word not in LIST_RETURN_OPTIONS:
            raise ParseError(f"Unsupported LIST return option {word[:40]}")
        if word == "STATUS":  # RFC 5819: STATUS (items)
            reader.sp()
            status = _status_items(reader)
        return word

    options = reader.paren_list(option)
    return list(dict.fromkeys(options)), status


def _status(reader: Reader, ctx: _Context) -> StatusArgs:
    reader.sp()
    mailbox = reader.mailbox()
    reader.sp()
    return StatusArgs(mailbox, _status_items(reader))


def _append(reader: Reader, ctx: _Context) -> AppendArgs:
    reader.sp()
    mailbox = reader.mailbox()
    reader.sp()
    first = _append_message(reader)
    more = []
    while reader.take(b" "):  # MULTIAPPEND (RFC 3502)
        more.append(_append_message(reader))
    return AppendArgs(
        mailbox, first.flags, first.internal_date, first.message, tuple(more), first.catenate
    )


def _append_message(reader: Reader) -> AppendMessage:
    """``[flag-list SP] [date-time SP] literal``."""
    flags: tuple[str, ...] = ()
    if reader.peek() == 0x28:  # "("
        flags = reader.flag_list()
        reader.sp()
    internal_date = None
    if reader.peek() == 0x22:  # '"'
        internal_date = parse_date_time(reader.quoted())
        reader.sp()
    if reader.peek() in (0x43, 0x63):  # "CATENATE (" parts ")": RFC 4469
        if reader.keyword("APPEND data") != "CATENATE":
            raise ParseError("APPEND needs the message as a literal")
        reader.sp()
        parts = reader.paren_list(lambda: _cat_part(reader), allow_empty=False)
        return AppendMessage(flags, internal_date, b"", tuple(parts))
    utf8 = reader.peek() in (0x55, 0x75)  # "UTF8 (" literal8 ")": RFC 6855 §4
    if utf8:
        if reader.keyword("APPEND data") != "UTF8":
            raise ParseError("APPEND needs the message as a literal")
        reader.sp()
        reader.expect(b"(", "UTF8 (")
        if reader.peek() != 0x7E:
            raise ParseError("UTF8 APPEND data is a literal8 (~{n})")
    if reader.peek() == 0x7E:  # "~": a literal8 (RFC 3516), NULs allowed
        reader.pos += 1
    if reader.peek() != 0x7B:  # "{"
        raise ParseError("APPEND needs the message as a literal")
    message = reader.literal(spooled=True)
    if utf8:
        reader.expect(b")", ")")
    return AppendMessage(flags, internal_date, message)


def _cat_part(reader: Reader) -> CatPart:
    """``TEXT literal`` (or literal8) / ``URL astring``."""
    word = reader.keyword("CATENATE part")
    reader.sp()
    if word == "TEXT":
        if reader.peek() == 0x7E:  # "~"
            reader.pos += 1
        if reader.peek() != 0x7B:
            raise ParseError("CATENATE TEXT needs a literal")
        return CatPart(text=reader.literal())
    if word == "URL":
        return CatPart(url=reader.astring("URL").decode("utf-8", "replace"))
    raise ParseError(f"Unknown CATENATE part {word[:20]}")


def _id(reader: Reader, ctx: _Context) -> IdArgs:
    reader.sp()
    if reader.peek() != 0x28:
        if reader.atom("ID parameters").upper() != b"NIL":
            raise ParseError("Expected ID parameter list or NIL")
        return IdArgs(None)
    values = reader.paren_list(lambda: reader.nstring("ID parameter"))
    if len(values) % 2:
        raise ParseError("ID parameters must come in field/value pairs")
    params = []
    for key, value in zip(values[::2], values[1::2], strict=True):
        if key is None:
            raise ParseError("ID field name cannot be NIL")
        text = None if value is None else value.decode("utf-8", "replace")
        params.append((key.decode("utf-8", "replace"), text))
    return IdArgs(tuple(params))


def _enable(reader: Reader, ctx: _Context) -> EnableArgs:
    capabilities = []
    while reader.take(b" "):
        capabilities.append(reader.keyword("capability"))
    if not capabilities:
        raise ParseError("ENABLE needs at least one capability")
    return EnableArgs(tuple(dict.fromkeys(capabilities)))


def _compress(reader: Reader, ctx: _Context) -> CompressArgs:
    reader.sp()
    mechanism = reader.keyword("compression mechanism")
    if mechanism != "DEFLATE":
        raise ParseError(f"Unsupported compression mechanism {mechanism[:20]}")
    return CompressArgs(mechanism)


def _getquota(reader: Reader, ctx: _Context) -> QuotaArgs:
    reader.sp()
    return QuotaArgs(_utf8(reader.astring("quota root"), "quota root"))


def _expunge(reader: Reader, ctx: _Context) -> SequenceArgs | None:
    if not ctx.uid:
        return None
    reader.sp()
    return SequenceArgs(read_sequence_set(reader))


def _copy(reader: Reader, ctx: _Context) -> CopyArgs:
    reader.sp()
    sequence_set = read_sequence_set(reader)
    reader.sp()
    return CopyArgs(sequence_set, reader.mailbox())


def _fetch(reader: Reader, ctx: _Context) -> FetchArgs:
    reader.sp()
    sequence_set = read_sequence_set(reader)
    reader.sp()
    items = parse_fetch_items(reader)
    changed_since = None
    vanished = False
    if reader.take(b" "):  # RFC 4466 fetch-modifiers follow the items
        reader.expect(b"(", "(CHANGEDSINCE ...)")
        while True:
            word = reader.keyword("modifier")
            if word == "CHANGEDSINCE" and changed_since is None:
                reader.sp()
                changed_since = reader.number("mod-sequence", maximum=MAX_MODSEQ)
            elif word == "VANISHED" and not vanished:
                vanished = True
            else:
                raise ParseError(f"Unsupported or repeated FETCH modifier {word[:40]}")
            if reader.take(b")"):
                break
            reader.sp()
        if vanished and (changed_since is None or not ctx.uid):
            # RFC 7162 §3.2.6: only UID FETCH, only with CHANGEDSINCE.
            raise ParseError("The VANISHED modifier needs UID FETCH and CHANGEDSINCE")
    return FetchArgs(sequence_set, items, changed_since, vanished)


def _modifier(reader: Reader, name: str) -> int:
    """``"(" name SP mod-sequence ")"``: the only modifier we support."""
    reader.expect(b"(", f"({name} ...)")
    word = reader.keyword("modifier")
    if word != name:
        raise ParseError(f"Unsupported modifier {word[:40]}")
    reader.sp()
    value = reader.number("mod-sequence", maximum=MAX_MODSEQ)
    reader.expect(b")", ")")
    return value


def _store(reader: Reader, ctx: _Context) -> StoreArgs:
    reader.sp()
    sequence_set = read_sequence_set(reader)
    reader.sp()
    unchanged_since = None
    if reader.peek() == 0x28:  # RFC 7162: store-modifiers precede the item
        unchanged_since = _modifier(reader, "UNCHANGEDSINCE")
        reader.sp()
    item = reader.keyword("store item")
    silent = item.endswith(".SILENT")
    try:
        mode = StoreMode(item.removesuffix(".SILENT"))
    except ValueError:
        raise ParseError(f"Unknown store item {item[:40]}") from None
    reader.sp()
    if reader.peek() == 0x28:
        flags = reader.flag_list()
    else:
        flags = [reader.flag()]
        while reader.take(b" ") and reader.peek() != 0x28:
            flags.append(reader.flag())
        flags = list(dict.fromkeys(flags))
    if (reader.take(b" ") or reader.peek() == 0x28) and reader.peek() == 0x28:
        raise ParseError("STORE modifiers such as UNCHANGEDSINCE go before the flags (RFC 7162)")
    return StoreArgs(sequence_set, mode, silent, tuple(flags), unchanged_since)


def _search(reader: Reader, ctx: _Context) -> SearchArgs:
    reader.sp()
    return parse_search(reader, max_depth=ctx.max_depth)


def _sort(reader: Reader, ctx: _Context) -> SortArgs:
    reader.sp()
    return parse_sort(reader, max_depth=ctx.max_depth)


def _thread(reader: Reader, ctx: _Context) -> ThreadArgs:
    reader.sp()
    return parse_thread(reader, max_depth=ctx.max_depth)


_HANDLERS: dict[str, _Handler] = {
    **{name: _no_args for name in NO_ARG_COMMANDS},
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox,
    "SUBSCRIBE": _mailbox,
    "UNSUBSCRIBE": _mailbox,
    "GETQUOTAROOT": _mailbox,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "XLIST": _list,
    "STATUS": _status,
    "APPEND": _append,
    "ID": _id,
    "ENABLE": _enable,
    "GETQUOTA": _getquota,
    "COMPRESS": _compress,
    "NOTIFY": lambda reader, ctx: notify.parse(reader),
    "EXPUNGE": _expunge,
    "COPY": _copy,
    "MOVE": _copy,
    "FETCH": _fetch,
    "STORE": _store,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
}

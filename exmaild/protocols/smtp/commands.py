"""Parse one SMTP command line (RFC 5321 §4.1) into a frozen dataclass.

Sans-IO: the caller frames lines and passes each without its CRLF.  Every
problem becomes an `SMTPSyntaxError` carrying the exact reply to send, so the
server never has to guess a code.  Envelope paths are parsed strictly to the
RFC 5321 §4.1.2 grammar (with RFC 6531 UTF-8), with three tolerances that
Postfix also has: a space after "FROM:"/"TO:", source routes (parsed, then
dropped as §4.1.1.3 requires) and a single trailing dot on the domain.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property

import idna

from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.replies import Reply

# RFC 5321 allows 512 octets but extensions lengthen MAIL/RCPT; 2048 is Postfix's
# line_length_limit.  RFC 4954 §4 requires AUTH lines up to 12288 octets.
MAX_COMMAND_LINE = 2048
MAX_AUTH_LINE = 12288


class SMTPSyntaxError(Exception):
    """A command we refuse; `reply` is exactly what the client must be told."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.encode().decode("utf-8").rstrip())
        self.reply = reply


class Verb(StrEnum):
    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    EXPN = "EXPN"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"


class Body(StrEnum):
    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"


class Ret(StrEnum):
    FULL = "FULL"
    HDRS = "HDRS"


class Notify(StrEnum):
    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


# --- grammar ----------------------------------------------------------------------------------
_UTF8 = "\u0080-\U0010ffff"  # RFC 6531 UTF8-non-ascii, admitted in atext, qtext and labels
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_ATOM = rf"[{_ATEXT}{_UTF8}]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(rf'"((?:[ !#-\[\]-~{_UTF8}]|\\[ -~])*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")
_LET_DIG = rf"[A-Za-z0-9{_UTF8}]"
_LABEL = rf"{_LET_DIG}(?:[A-Za-z0-9\-{_UTF8}]*{_LET_DIG})?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LITERAL = re.compile(r"\[([!-Z^-~]+)\]")  # dcontent: no "[", "\" or "]"
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")  # RFC 3461 §4
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_ADDR_TYPE = re.compile(rf"[{_ATEXT}]+")  # RFC 3461 addr-type = atom
_SASL_MECH = re.compile(r"[A-Z0-9_-]{1,20}")  # RFC 4422 §3.1
# C0/C1 controls and the Unicode line separators: never legitimate in a command,
# and dangerous once an address is copied into a header or a log line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_VERBS = {v.value: v for v in Verb}  # a dict lookup; Verb(name) costs ~1 µs per line
_UNIMPLEMENTED = frozenset({"BDAT", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML"})
_BODY_VALUES = frozenset(Body)  # BINARYMIME needs BDAT, which we do not offer
_RET_VALUES = frozenset(Ret)
_MAX_ENVID, _MAX_ORCPT = 100, 500  # RFC 3461 §4.4, §4.2


def _upper_ascii(text: str) -> str:
    # str.upper() maps some non-ASCII letters onto ASCII ("ı" -> "I"); keywords are ASCII.
    return text.upper() if text.isascii() else ""


def _canonical_literal(content: str) -> str:
    """`content` of an address literal (between the brackets), canonicalised."""
    tag, colon, value = content.partition(":")
    if colon:
        # RFC 5321 §4.1.3 standardises only the IPv6 tag; "%scope" is not IPv6-addr.
        if tag.lower() != "ipv6" or "%" in value:
            raise ValueError(content)
        return f"[IPv6:{ipaddress.IPv6Address(value).compressed}]"
    parts = content.split(".")  # Snum = 1*3DIGIT, 0-255: leading zeros allowed
    if len(parts) != 4 or not all(
        p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts
    ):
        raise ValueError(content)
    return "[" + ".".join(str(int(p)) for p in parts) + "]"


@dataclass(frozen=True)
class Address:
    """A mailbox: `local` is the decoded local part (quotes and escapes removed);
    `domain` is as sent, without a trailing dot, or an address literal such as
    "[192.0.2.1]"; it is "" only for the bare RCPT TO:<postmaster>."""

    local: str
    domain: str

    @property
    def text(self) -> str:
        """Canonical RFC 5321 form: the local part is quoted only when it must be."""
        if _DOT_STRING.fullmatch(self.local):
            local = self.local
        else:
            local = '"' + self.local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    def __str__(self) -> str:
        return self.text

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @cached_property
    def domain_ascii(self) -> str:
        """Lower-case ASCII form of the domain: U-labels become A-labels (IDNA 2008).
        Raises ValueError for a domain that cannot be a DNS name."""
        if self.is_literal:
            return _canonical_literal(self.domain[1:-1])
        if not self.domain:
            return ""
        labels = []
        for label in self.domain.lower().split("."):
            if not label.isascii():
                label = idna.alabel(label).decode("ascii")
            if not 0 < len(label) <= 63:
                raise ValueError(f"bad label in {self.domain!r}")
            labels.append(label)
        result = ".".join(labels)
        if len(result) > 253:
            raise ValueError(f"domain too long: {self.domain!r}")
        return result

    def normalised(self) -> Address:
        """Domain lower-cased (literals canonicalised); the local part keeps its case."""
        if self.is_literal:
            return replace(self, domain=_canonical_literal(self.domain[1:-1]))
        return replace(self, domain=self.domain.lower().removesuffix("."))


@dataclass(frozen=True)
class MailParams:
    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    auth: str | None = None  # RFC 4954 §5 AUTH=, decoded: "<>" or a mailbox
    ret: Ret | None = None
    envid: str | None = None  # decoded xtext


@dataclass(frozen=True)
class OriginalRecipient:
    addr_type: str  # "rfc822", or "utf-8" (RFC 6533), as sent
    address: str  # decoded xtext


@dataclass(frozen=True)
class RcptParams:
    notify: frozenset[Notify] | None = None  # None: not given; {NEVER} alone for NEVER
    orcpt: OriginalRecipient | None = None


@dataclass(frozen=True)
class Command:
    verb: Verb
    arg: str = ""  # text after the verb, spaces trimmed (HELO name, VRFY arg, ...)


@dataclass(frozen=True, kw_only=True)
class MailCommand(Command):
    sender: Address | None  # None: the null reverse-path <>
    params: MailParams = MailParams()


@dataclass(frozen=True, kw_only=True)
class RcptCommand(Command):
    recipient: Address
    params: RcptParams = RcptParams()


@dataclass(frozen=True, kw_only=True)
class AuthCommand(Command):
    mechanism: str  # upper case
    initial_response: str | None = None  # raw; see decode_sasl_response(initial=True)


# --- xtext and SASL ---------------------------------------------------------------------------
def decode_xtext(text: str) -> str:
    """RFC 3461 §4 xtext -> text; ValueError unless the result is printable ASCII
    (it ends up in DSN headers, so controls would allow header injection)."""
    if not _XTEXT.fullmatch(text):
        raise ValueError(f"bad xtext: {text!r}")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    if not all(" " <= c <= "~" for c in decoded):
        raise ValueError(f"xtext decodes to non-printable text: {text!r}")
    return decoded


def encode_xtext(text: str) -> str:
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}"
        for b in text.encode("utf-8")
    )


def decode_sasl_response(text: str | bytes, *, initial: bool = False) -> bytes:
    """Decode a base64 SASL response line (or AUTH's initial response when
    `initial`, where "=" means empty).  "*" cancels the exchange (RFC 4954 §4)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")  # non-ASCII then fails base64 below
    if text == "*":
        raise SMTPSyntaxError(R.AUTH_ABORTED)
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SMTPSyntaxError(R.AUTH_CANNOT_DECODE) from None


# --- paths ------------------------------------------------------------------------------------
def _parse_domain(text: str, i: int, bad: Reply) -> tuple[str, int]:
    m = _DOMAIN.match(text, i)
    if not m:
        raise SMTPSyntaxError(bad)
    return m.group().removesuffix("."), m.end()


def _skip_route(text: str, i: int, bad: Reply) -> int:
    """Skip an RFC 5321 A-d-l ("@a,@b:") at i; the route is checked, then ignored."""
    if not text.startswith("@", i):
        return i
    while True:
        _, i = _parse_domain(text, i + 1, bad)
        if text.startswith(",@", i):
            i += 1
        elif text.startswith(":", i):
            return i + 1
        else:
            raise SMTPSyntaxError(bad)


def _parse_mailbox(text: str, i: int, bad: Reply) -> tuple[Address, int]:
    if text.startswith('"', i):
        m = _QUOTED.match(text, i)
        local = _QUOTED_PAIR.sub(r"\1", m.group(1)) if m else ""
    else:
        m = _DOT_STRING.match(text, i)
        local = m.group() if m else ""
    if not m or not text.startswith("@", m.end()):
        raise SMTPSyntaxError(bad)
    i = m.end() + 1
    try:
        if text.startswith("[", i):
            lit = _LITERAL.match(text, i)
            if not lit:
                raise SMTPSyntaxError(bad)
            return Address(local, _canonical_literal(lit.group(1))), lit.end()
        domain, i = _parse_domain(text, i, bad)
        address = Address(local, domain)
        address.domain_ascii  # noqa: B018 - validates (and caches) the IDNA form
    except (ValueError, UnicodeError):
        raise SMTPSyntaxError(bad) from None
    return address, i


def _is_postmaster(text: str) -> bool:
    return text.isascii() and text.lower() == "postmaster"


def _parse_path(
    text: str, *, bad: Reply, null_ok: bool, postmaster_ok: bool, bare_ok: bool
) -> tuple[Address | None, str]:
    """Parse a reverse- or forward-path at the start of `text`; return the
    address (None for "<>") and the parameter text after it."""
    address: Address | None
    if text.startswith("<"):
        if null_ok and text.startswith("<>"):
            address, end = None, 2
        elif postmaster_ok and _is_postmaster(text[1:11]) and text.startswith(">", 11):
            address, end = Address(text[1:11], ""), 12  # RFC 5321 §4.1.1.3 "<Postmaster>"
        else:
            address, end = _parse_mailbox(text, _skip_route(text, 1, bad), bad)
            if not text.startswith(">", end):
                raise SMTPSyntaxError(bad)
            end += 1
    elif bare_ok:
        word = text.partition(" ")[0]
        if postmaster_ok and _is_postmaster(word):
            address, end = Address(word, ""), len(word)
        else:
            address, end = _parse_mailbox(text, _skip_route(text, 0, bad), bad)
    else:
        raise SMTPSyntaxError(bad)
    rest = text[end:]
    if rest and not rest.startswith(" "):
        raise SMTPSyntaxError(bad)
    return address, rest


# --- ESMTP parameters -------------------------------------------------------------------------
def _split_params(text: str) -> dict[str, tuple[str, str | None]]:
    """KEYWORD -> (token as sent, value or None); unknown syntax is 555, repeats 501."""
    params: dict[str, tuple[str, str | None]] = {}
    for token in text.split(" "):
        if not token:
            continue  # runs of spaces are common and harmless
        keyword, eq, value = token.partition("=")
        if not _KEYWORD.fullmatch(keyword):
            raise SMTPSyntaxError(R.unsupported_option(token))
        keyword = keyword.upper()
        if keyword in params:
            raise SMTPSyntaxError(R.duplicate_parameter(keyword))
        params[keyword] = (token, value if eq else None)
    return params


def _xtext_param(value: str | None, bad: Reply, limit: int) -> str:
    try:
        decoded = decode_xtext(value or "")
    except ValueError:
        raise SMTPSyntaxError(bad) from None
    if not decoded or len(decoded) > limit:
        raise SMTPSyntaxError(bad)
    return decoded


def _mail_params(text: str) -> MailParams:
    out: dict[str, object] = {}
    for keyword, (token, value) in _split_params(text).items():
        upper = _upper_ascii(value or "")
        if keyword == "SIZE":  # RFC 1870: 1*20DIGIT
            if not (value and len(value) <= 20 and value.isascii() and value.isdigit()):
                raise SMTPSyntaxError(R.BAD_SIZE)
            out["size"] = int(value)
        elif keyword == "BODY" and upper in _BODY_VALUES:
            out["body"] = Body(upper)
        elif keyword == "SMTPUTF8" and value is None:  # RFC 6531 §3.4
            out["smtputf8"] = True
        elif keyword == "AUTH":
            out["auth"] = _auth_param(value)
        elif keyword == "RET":
            if upper not in _RET_VALUES:
                raise SMTPSyntaxError(R.BAD_RET)
            out["ret"] = Ret(upper)
        elif keyword == "ENVID":
            out["envid"] = _xtext_param(value, R.BAD_ENVID, _MAX_ENVID)
        else:  # unknown keywords, BODY=BINARYMIME (no BDAT here), SMTPUTF8=x ...
            raise SMTPSyntaxError(R.unsupported_option(token))
    return MailParams(**out)  # type: ignore[arg-type]


def _auth_param(value: str | None) -> str:
    decoded = _xtext_param(value, R.BAD_AUTH_PARAM, 512)
    if decoded != "<>":
        _, end = _parse_mailbox(decoded, 0, R.BAD_AUTH_PARAM)
        if end != len(decoded):
            raise SMTPSyntaxError(R.BAD_AUTH_PARAM)
    return decoded


def _rcpt_params(text: str) -> RcptParams:
    notify: frozenset[Notify] | None = None
    orcpt: OriginalRecipient | None = None
    for keyword, (token, value) in _split_params(text).items():
        if keyword == "NOTIFY":  # RFC 3461 §4.1: NEVER, or a list of the other three
            items = _upper_ascii(value or "").split(",")
            if items == ["NEVER"]:
                notify = frozenset({Notify.NEVER})
            elif len(set(items)) == len(items) and set(items) <= {"SUCCESS", "FAILURE", "DELAY"}:
                notify = frozenset(Notify(item) for item in items)
            else:
                raise SMTPSyntaxError(R.BAD_NOTIFY)
        elif keyword == "ORCPT":  # RFC 3461 §4.2: addr-type ";" xtext
            addr_type, semi, xtext = (value or "").partition(";")
            if not semi or not _ADDR_TYPE.fullmatch(addr_type):
                raise SMTPSyntaxError(R.BAD_ORCPT)
            orcpt = OriginalRecipient(addr_type, _xtext_param(xtext, R.BAD_ORCPT, _MAX_ORCPT))
        else:
            raise SMTPSyntaxError(R.unsupported_option(token))
    return RcptParams(notify=notify, orcpt=orcpt)


# --- commands ---------------------------------------------------------------------------------
def _parse_mail(arg: str, bare_ok: bool) -> MailCommand:
    rest = arg[5:].lstrip(" ")
    if _upper_ascii(arg[:5]) != "FROM:" or not rest:
        raise SMTPSyntaxError(R.SYNTAX_MAIL)
    sender, param_text = _parse_path(
        rest, bad=R.BAD_SENDER_SYNTAX, null_ok=True, postmaster_ok=False, bare_ok=bare_ok
    )
    params = _mail_params(param_text)
    if sender is not None and not sender.is_ascii and not params.smtputf8:
        raise SMTPSyntaxError(R.SMTPUTF8_REQUIRED)
    return MailCommand(verb=Verb.MAIL, arg=arg, sender=sender, params=params)


def _parse_rcpt(arg: str, smtputf8: bool, bare_ok: bool) -> RcptCommand:
    rest = arg[3:].lstrip(" ")
    if _upper_ascii(arg[:3]) != "TO:" or not rest:
        raise SMTPSyntaxError(R.SYNTAX_RCPT)
    recipient, param_text = _parse_path(
        rest, bad=R.BAD_RECIPIENT_SYNTAX, null_ok=False, postmaster_ok=True, bare_ok=bare_ok
    )
    assert recipient is not None  # null_ok=False
    params = _rcpt_params(param_text)
    if not recipient.is_ascii and not smtputf8:
        raise SMTPSyntaxError(R.SMTPUTF8_REQUIRED)
    return RcptCommand(verb=Verb.RCPT, arg=arg, recipient=recipient, params=params)


def _parse_auth(arg: str) -> AuthCommand:
    mechanism, _, initial = arg.partition(" ")
    initial = initial.strip(" ")
    mechanism = _upper_ascii(mechanism)
    if not _SASL_MECH.fullmatch(mechanism) or " " in initial:
        raise SMTPSyntaxError(R.SYNTAX_AUTH)
    return AuthCommand(
        verb=Verb.AUTH, arg=arg, mechanism=mechanism, initial_response=initial or None
    )


# Verbs whose argument is forbidden (False) or required (True), and the reply if not so.
_ARGUMENT_RULES = {
    Verb.DATA: (False, R.SYNTAX_DATA),
    Verb.RSET: (False, R.SYNTAX_RSET),
    Verb.STARTTLS: (False, R.SYNTAX_STARTTLS),
    Verb.HELO: (True, R.SYNTAX_HELO),
    Verb.EHLO: (True, R.SYNTAX_EHLO),
    Verb.VRFY: (True, R.SYNTAX_VRFY),
    Verb.EXPN: (True, R.SYNTAX_EXPN),
}


def parse_command(
    line: bytes, *, smtputf8: bool = False, allow_bare_address: bool = False
) -> Command:
    """Parse one command line (without CRLF).

    `smtputf8`: the current transaction's MAIL carried SMTPUTF8, so RCPT may
    use UTF-8 addresses.  `allow_bare_address`: accept MAIL FROM:user@host
    without angle brackets (RFC 5321 requires them; some old clients omit them).
    Raises SMTPSyntaxError, and nothing else, for anything we refuse.
    """
    is_auth = line[:5].upper() == b"AUTH "
    if len(line) > (MAX_AUTH_LINE if is_auth else MAX_COMMAND_LINE):
        raise SMTPSyntaxError(R.AUTH_LINE_TOO_LONG if is_auth else R.LINE_TOO_LONG)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SMTPSyntaxError(R.BAD_UTF8) from None
    if _CONTROL.search(text):
        raise SMTPSyntaxError(R.BAD_SYNTAX)
    word, _, arg = text.strip(" ").partition(" ")
    arg = arg.lstrip(" ")
    if not word:
        raise SMTPSyntaxError(R.BAD_SYNTAX)
    verb = _VERBS.get(_upper_ascii(word))
    if verb is None:
        name = _upper_ascii(word)
        raise SMTPSyntaxError(R.NOT_IMPLEMENTED if name in _UNIMPLEMENTED else R.NOT_RECOGNIZED)
    if verb is Verb.MAIL:
        return _parse_mail(arg, allow_bare_address)
    if verb is Verb.RCPT:
        return _parse_rcpt(arg, smtputf8, allow_bare_address)
    if verb is Verb.AUTH:
        return _parse_auth(arg)
    needs_argument, reply = _ARGUMENT_RULES.get(verb, (bool(arg), R.BAD_SYNTAX))
    if needs_argument != bool(arg):
        raise SMTPSyntaxError(reply)
    if verb is Verb.QUIT:
        arg = ""  # like Postfix: QUIT always works, whatever follows it
    return Command(verb, arg)

"""Sieve grammar (RFC 5228 §8.2) into a checked tree of commands and tests.

Parsing also validates: every command and test is known and its extension
required, tags are known to it and not repeated, positional arguments have
the right kind. Everything a script may do wrong is found here, before it
is stored, so PUTSCRIPT and `exmailctl sieve put` refuse it with its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exmaild.sieve.errors import SieveError
from exmaild.sieve.lexer import EOF, IDENT, NUMBER, PUNCT, STRING, TAG, Lexer, Token

# Extensions this engine implements (the CAPABILITY "SIEVE" list).
EXTENSIONS = (
    "fileinto", "reject", "ereject", "envelope", "body", "imap4flags", "copy", "vacation",
    "relational", "subaddress", "variables", "date", "comparator-i;ascii-numeric", "mime",
    # exmaild's own: vacation :known answers only senders the member knows
    # (docs/sieve.md); vnd.* names are for private extensions (RFC 5228 §6).
    "vnd.exmaild.vacation-known",
)
COMPARATORS = {"i;ascii-casemap": None, "i;octet": None,
               "i;ascii-numeric": "comparator-i;ascii-numeric"}
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
MAX_NESTING = 32

# Argument kinds.
S, SL, N = "string", "stringlist", "number"


@dataclass(frozen=True)
class TagSpec:
    group: str  # at most one tag of a group per command
    arg: str | None = None  # kind of the argument following the tag
    ext: str | None = None  # extension that must be required


_COMPARATOR = {":comparator": TagSpec("comparator", S)}
_MATCH = {
    ":is": TagSpec("match"), ":contains": TagSpec("match"), ":matches": TagSpec("match"),
    ":value": TagSpec("match", S, "relational"), ":count": TagSpec("match", S, "relational"),
}
_ADDRPART = {
    ":all": TagSpec("addrpart"), ":localpart": TagSpec("addrpart"),
    ":domain": TagSpec("addrpart"), ":user": TagSpec("addrpart", None, "subaddress"),
    ":detail": TagSpec("addrpart", None, "subaddress"),
}
_ZONE = {":zone": TagSpec("zone", S), ":originalzone": TagSpec("zone")}
# RFC 5703 "mime", for the header test only (no foreverypart, no address/exists :mime).
_MIME = {":mime": TagSpec("mime", None, "mime"), ":anychild": TagSpec("anychild", None, "mime"),
         ":type": TagSpec("mimeopt", None, "mime"), ":subtype": TagSpec("mimeopt", None, "mime"),
         ":contenttype": TagSpec("mimeopt", None, "mime"),
         ":param": TagSpec("mimeopt", SL, "mime")}
_COPY = {":copy": TagSpec("copy", None, "copy")}
_FLAGS = {":flags": TagSpec("flags", SL, "imap4flags")}
_SETMOD = {t: TagSpec(g) for t, g in (
    (":lower", "case"), (":upper", "case"), (":lowerfirst", "case1"), (":upperfirst", "case1"),
    (":quotewildcard", "quote"), (":length", "length"))}


@dataclass(frozen=True)
class Spec:
    tags: dict[str, TagSpec]
    args: tuple[str, ...]
    ext: str | None = None
    optional_first: bool = False  # imap4flags: a leading variable name may be left out


TESTS: dict[str, Spec] = {
    "address": Spec({**_COMPARATOR, **_MATCH, **_ADDRPART}, (SL, SL)),
    "envelope": Spec({**_COMPARATOR, **_MATCH, **_ADDRPART}, (SL, SL), "envelope"),
    "header": Spec({**_COMPARATOR, **_MATCH, **_MIME}, (SL, SL)),
    "exists": Spec({}, (SL,)),
    "size": Spec({":over": TagSpec("size"), ":under": TagSpec("size")}, (N,)),
    "true": Spec({}, ()), "false": Spec({}, ()),
    "body": Spec({**_COMPARATOR, **_MATCH, ":raw": TagSpec("transform"),
                  ":text": TagSpec("transform"), ":content": TagSpec("transform", SL)},
                 (SL,), "body"),
    "string": Spec({**_COMPARATOR, **_MATCH}, (SL, SL), "variables"),
    "date": Spec({**_COMPARATOR, **_MATCH, **_ZONE}, (S, S, SL), "date"),
    "currentdate": Spec({**_COMPARATOR, **_MATCH, ":zone": _ZONE[":zone"]}, (S, SL), "date"),
    "hasflag": Spec({**_COMPARATOR, **_MATCH}, (SL, SL), "imap4flags", optional_first=True),
}
COMMANDS: dict[str, Spec] = {
    "require": Spec({}, (SL,)),
    "stop": Spec({}, ()),
    "keep": Spec(_FLAGS, ()),
    "discard": Spec({}, ()),
    "redirect": Spec(_COPY, (S,)),
    "fileinto": Spec({**_COPY, **_FLAGS}, (S,), "fileinto"),
    "reject": Spec({}, (S,), "reject"),
    "ereject": Spec({}, (S,), "ereject"),
    "setflag": Spec({}, (S, SL), "imap4flags", optional_first=True),
    "addflag": Spec({}, (S, SL), "imap4flags", optional_first=True),
    "removeflag": Spec({}, (S, SL), "imap4flags", optional_first=True),
    "set": Spec(_SETMOD, (S, S), "variables"),
    "vacation": Spec({":days": TagSpec("period", N), ":seconds": TagSpec("period", N),
                      ":subject": TagSpec("subject", S), ":from": TagSpec("from", S),
                      ":addresses": TagSpec("addresses", SL), ":mime": TagSpec("mime"),
                      ":handle": TagSpec("handle", S),
                      ":known": TagSpec("known", None, "vnd.exmaild.vacation-known")},
             (S,), "vacation"),
}
CONTROL = ("if", "elsif", "else")


@dataclass
class Test:
    name: str
    tags: dict[str, object]
    args: list[object]
    tests: list[Test]
    line: int
    col: int
    matcher: Any = None  # the interpreter's Matcher, made on first use


@dataclass
class Command:
    name: str
    tags: dict[str, object]
    args: list[object]
    test: Test | None
    block: list[Command] | None
    line: int
    col: int
    branches: list[Command] = field(default_factory=list)  # elsif/else after an if


@dataclass
class Script:
    commands: list[Command]
    requires: frozenset[str]


def parse(text: str, max_size: int = 0) -> Script:
    """Parse and check a script; raises SieveError naming the line."""
    if max_size and len(text.encode("utf-8", "surrogatepass")) > max_size:
        raise SieveError(f"script larger than {max_size} octets")
    return _Parser(Lexer(text).tokens()).script()


class _Parser:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.i = 0
        self.requires: set[str] = set()
        self.depth = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        if t.kind != EOF:
            self.i += 1
        return t

    def err(self, msg: str, tok: Token | None = None) -> SieveError:
        t = tok or self.peek()
        return SieveError(msg, t.line, t.col)

    def is_punct(self, c: str) -> bool:
        t = self.peek()
        return t.kind == PUNCT and t.value == c

    def expect(self, c: str) -> None:
        if not self.is_punct(c):
            t = self.peek()
            got = "end of script" if t.kind == EOF else repr(t.value)
            raise self.err(f"expected '{c}', found {got}")
        self.take()

    def script(self) -> Script:
        cmds = self.commands(top=True)
        if self.peek().kind != EOF:
            raise self.err(f"unexpected {self.peek().value!r}")
        return Script(cmds, frozenset(self.requires))

    def commands(self, top: bool = False) -> list[Command]:
        out: list[Command] = []
        prev: Command | None = None
        allow_require = top
        while self.peek().kind == IDENT:
            cmd = self.command(allow_require)
            if cmd.name != "require":
                allow_require = False
            if cmd.name in ("elsif", "else"):
                if prev is None or prev.name != "if" or (prev.branches and
                                                         prev.branches[-1].name == "else"):
                    raise self.err(f"'{cmd.name}' without a preceding 'if'",
                                   self.toks[self.i - 1])
                prev.branches.append(cmd)
                continue
            out.append(cmd)
            prev = cmd
        return out

    def command(self, allow_require: bool) -> Command:
        name_tok = self.take()
        name = str(name_tok.value)
        if name in CONTROL:
            test = None
            if name != "else":
                test = self.test()
            block = self.block()
            return Command(name, {}, [], test, block, name_tok.line, name_tok.col)
        spec = COMMANDS.get(name)
        if spec is None:
            raise self.err(f"unknown command '{name}'", name_tok)
        if name == "require" and not allow_require:
            raise self.err("'require' must come before other commands", name_tok)
        if spec.ext and spec.ext not in self.requires:
            raise self.err(f"'{name}' needs require \"{spec.ext}\"", name_tok)
        tags, args = self.arguments(spec, name, name_tok)
        if self.is_punct("{"):
            raise self.err(f"'{name}' takes no block")
        if self.peek().kind == IDENT or self.is_punct("("):
            raise self.err(f"'{name}' takes no test")
        self.expect(";")
        if name == "require":
            for ext in args[0]:  # type: ignore[union-attr]
                if ext not in EXTENSIONS:
                    raise self.err(f"unsupported extension \"{ext}\"", name_tok)
                self.requires.add(ext)
        return Command(name, tags, args, None, None, name_tok.line, name_tok.col)

    def block(self) -> list[Command]:
        self.expect("{")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.err("blocks nested too deeply")
        cmds = self.commands()
        self.depth -= 1
        self.expect("}")
        return cmds

    def test(self) -> Test:
        tok = self.take()
        if tok.kind != IDENT:
            raise self.err("expected a test", tok)
        name = str(tok.value)
        if name in ("allof", "anyof"):
            self.expect("(")
            tests = [self._nested_test()]
            while self.is_punct(","):
                self.take()
                tests.append(self._nested_test())
            self.expect(")")
            return Test(name, {}, [], tests, tok.line, tok.col)
        if name == "not":
            return Test(name, {}, [], [self._nested_test()], tok.line, tok.col)
        spec = TESTS.get(name)
        if spec is None:
            raise self.err(f"unknown test '{name}'", tok)
        if spec.ext and spec.ext not in self.requires:
            raise self.err(f"'{name}' needs require \"{spec.ext}\"", tok)
        tags, args = self.arguments(spec, name, tok)
        return Test(name, tags, args, [], tok.line, tok.col)

    def _nested_test(self) -> Test:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.err("tests nested too deeply")
        t = self.test()
        self.depth -= 1
        return t

    def arguments(self, spec: Spec, name: str, at: Token) -> tuple[dict[str, object], list[object]]:
        tags: dict[str, object] = {}
        groups: set[str] = set()
        args: list[object] = []
        while True:
            t = self.peek()
            if t.kind == TAG:
                self.take()
                tag = str(t.value)
                ts = spec.tags.get(tag)
                if ts is None:
                    raise self.err(f"'{name}' has no tag {tag}", t)
                if ts.ext and ts.ext not in self.requires:
                    raise self.err(f"{tag} needs require \"{ts.ext}\"", t)
                if ts.group in groups:
                    raise self.err(f"{tag} conflicts with an earlier tag of '{name}'", t)
                groups.add(ts.group)
                value: object = True
                if ts.arg is not None:
                    value = self.value(ts.arg, f"{tag}")
                tags[tag] = value
                if args:
                    raise self.err(f"tag {tag} after positional arguments", t)
            elif t.kind in (STRING, NUMBER) or (t.kind == PUNCT and t.value == "["):
                args.append(self.any_value())
            else:
                break
        want = spec.args
        if spec.optional_first and len(args) == len(want) - 1:
            args.insert(0, None)
        if len(args) != len(want):
            raise self.err(f"'{name}' takes {len(want)} argument(s), found {len(args)}", at)
        for k, (kind, value) in enumerate(zip(want, args, strict=True)):
            if value is None and spec.optional_first and k == 0:
                continue
            args[k] = self._coerce(kind, value, name, at)
        self._check_values(name, tags, args, at)
        return tags, args

    def _coerce(self, kind: str, value: object, name: str, at: Token) -> object:
        if kind == N:
            if not isinstance(value, int):
                raise self.err(f"'{name}' expects a number", at)
            return value
        if isinstance(value, int):
            raise self.err(f"'{name}' expects a string, found a number", at)
        if kind == S:
            if isinstance(value, list):
                if len(value) != 1:
                    raise self.err(f"'{name}' expects a single string, not a list", at)
                return value[0]
            return value
        return value if isinstance(value, list) else [value]

    def value(self, kind: str, what: str) -> object:
        t = self.peek()
        v = self.any_value()
        try:
            return self._coerce(kind, v, what, t)
        except SieveError as e:
            raise self.err(f"{what} expects a {kind}", t) from e

    def any_value(self) -> object:
        t = self.take()
        if t.kind == NUMBER:
            return t.value
        if t.kind == STRING:
            return t.value
        if t.kind == PUNCT and t.value == "[":
            items = [self._string()]
            while self.is_punct(","):
                self.take()
                items.append(self._string())
            self.expect("]")
            return items
        raise self.err("expected a string, string list or number", t)

    def _string(self) -> str:
        t = self.take()
        if t.kind != STRING:
            raise self.err("expected a string in the list", t)
        return str(t.value)

    def _check_values(self, name: str, tags: dict[str, object], args: list[object],
                      at: Token) -> None:
        comp = tags.get(":comparator")
        if comp is not None:
            if comp not in COMPARATORS:
                raise self.err(f"unknown comparator \"{comp}\"", at)
            ext = COMPARATORS[str(comp)]
            if ext and ext not in self.requires:
                raise self.err(f"comparator \"{comp}\" needs require \"{ext}\"", at)
        if name == "header" and any(t in tags for t in _MIME) and ":mime" not in tags:
            raise self.err(f"'{name}' takes :anychild, :type, :subtype, :contenttype and "
                           ":param only with :mime", at)
        for rel in (":value", ":count"):
            if rel in tags and str(tags[rel]).lower() not in RELATIONS:
                raise self.err(f"{rel} needs one of {', '.join(RELATIONS)}", at)
        if name == "envelope":
            for part in args[0]:  # type: ignore[union-attr]
                if part.lower() not in ("from", "to"):
                    raise self.err(f"envelope part \"{part}\" is not from or to", at)
        if name == "size" and not tags:
            raise self.err("'size' needs :over or :under", at)
        if name in ("date", "currentdate"):
            from exmaild.sieve.dates import DATE_PARTS

            part = str(args[-2]).lower()
            if part not in DATE_PARTS:
                raise self.err(f"unknown date part \"{part}\"", at)
        if name == "vacation":
            for t in (":days", ":seconds"):
                if t in tags and int(tags[t]) < 0:  # type: ignore[call-overload]
                    raise self.err(f"{t} must not be negative", at)
        if name == "set":
            import re

            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
                                str(args[0])):
                raise self.err(f"invalid variable name \"{args[0]}\"", at)

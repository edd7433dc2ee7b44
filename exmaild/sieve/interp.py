"""Running a parsed script over one message: the list of actions to take.

The interpreter only decides; the delivery code carries the actions out
(placement, queue). Limits keep a hostile script cheap: a step budget on
every command, test and compared value, a wall-clock budget checked with it,
and caps on actions and redirects. Any SieveRuntimeError means "implicit
keep" to the caller.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from exmaild.sieve.dates import date_part, parse_date, parse_zone
from exmaild.sieve.errors import SieveRuntimeError
from exmaild.sieve.match import Matcher, fold, glob_captures, wildcard
from exmaild.sieve.message import MessageContext
from exmaild.sieve.parser import Command, Script, Test

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")
MAX_VARIABLE_LEN = 4096
MAX_VARIABLES = 128


@dataclass(frozen=True)
class Limits:
    max_actions: int = 32
    max_redirects: int = 4
    max_steps: int = 100_000
    max_cpu_ms: int = 200


@dataclass(frozen=True)
class Action:
    """kind: keep | fileinto | discard | redirect | reject | ereject | vacation."""

    kind: str
    target: str = ""  # folder, redirect address, or rejection text
    flags: tuple[str, ...] = ()
    copy: bool = False
    vacation: Vacation | None = None


@dataclass(frozen=True)
class Vacation:
    reason: str
    subject: str | None
    from_: str | None
    addresses: tuple[str, ...]
    seconds: int
    handle: str
    mime: bool
    known_only: bool = False  # vnd.exmaild.vacation-known: only senders the member knows


@dataclass
class Result:
    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True
    flags: tuple[str, ...] = ()  # the flags implicit keep stores with

    @property
    def effective(self) -> list[Action]:
        """The actions with implicit keep made explicit (when still in force)."""
        out = list(self.actions)
        if self.implicit_keep and not any(a.kind == "keep" for a in out):
            out.insert(0, Action("keep", "INBOX", self.flags))
        return out


class _Stop(Exception):
    pass


class Interpreter:
    def __init__(self, script: Script, msg: MessageContext, limits: Limits | None = None,
                 now: datetime | None = None, zone: tzinfo | None = None) -> None:
        self.script = script
        # RFC 5260's "local time zone": the enterprise's ([exmail_api] timezone)
        # when given, so a rule's dates mean the members' calendar, not the host's.
        self.zone = zone
        self.msg = msg
        self.limits = limits or Limits()
        self.now = now or datetime.now(UTC)
        self.variables = "variables" in script.requires
        self.vars: dict[str, str] = {}
        self.match_vars: list[str] = []
        self.flags: list[str] = []
        self.result = Result()
        self.steps = 0
        self.next_check = min(256, self.limits.max_steps + 1)
        self.folded: dict[tuple[str, str], str] = {}
        self.deadline = time.monotonic() + self.limits.max_cpu_ms / 1000

    def run(self) -> Result:
        try:
            self._block(self.script.commands)
        except _Stop:
            pass
        except RecursionError as e:  # cannot happen within MAX_NESTING; never crash
            raise SieveRuntimeError("script too deeply nested") from e
        self.result.flags = tuple(self.flags)
        return self.result

    # -- helpers ----------------------------------------------------------
    def _step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps >= self.next_check:
            if self.steps > self.limits.max_steps:
                raise SieveRuntimeError(f"more than {self.limits.max_steps} evaluation steps")
            if time.monotonic() > self.deadline:
                raise SieveRuntimeError(
                    f"evaluation took more than {self.limits.max_cpu_ms} ms")
            self.next_check = min(self.steps + 256, self.limits.max_steps + 1)

    def _fold(self, value: str, comparator: str) -> str:
        """`fold` memoised per evaluation: a body is folded once for all its tests."""
        key = (value, comparator)
        got = self.folded.get(key)
        if got is None:
            got = self.folded[key] = fold(value, comparator)
        return got

    def _s(self, s: object) -> str:
        text = str(s)
        if not self.variables or "${" not in text:
            return text

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.isdigit():
                i = int(name)
                return self.match_vars[i] if i < len(self.match_vars) else ""
            return self.vars.get(name.lower(), "")

        return _VAR.sub(sub, text)

    def _sl(self, items: object) -> list[str]:
        if not self.variables:  # the parsed list itself: nothing to expand
            return items  # type: ignore[return-value]
        return [self._s(x) for x in items]  # type: ignore[attr-defined]

    def _add(self, action: Action) -> None:
        kinds = {a.kind for a in self.result.actions}
        if action.kind in ("reject", "ereject"):
            if kinds & {"keep", "fileinto", "redirect", "reject", "ereject", "vacation"}:
                raise SieveRuntimeError("reject cannot be combined with other delivery actions")
        elif kinds & {"reject", "ereject"} and action.kind in ("keep", "fileinto", "redirect",
                                                                 "vacation"):
            raise SieveRuntimeError(f"{action.kind} cannot follow reject")
        if action.kind == "vacation" and "vacation" in kinds:
            raise SieveRuntimeError("vacation used twice")
        if action.kind == "redirect":
            n = sum(1 for a in self.result.actions if a.kind == "redirect")
            if n >= self.limits.max_redirects:
                raise SieveRuntimeError(f"more than {self.limits.max_redirects} redirects")
        # Duplicates collapse (RFC 5228 §2.10.3): same folder or address once.
        for i, a in enumerate(self.result.actions):
            if a.kind == action.kind and a.target.lower() == action.target.lower() \
                    and action.kind in ("fileinto", "redirect", "keep"):
                if action.kind != "redirect":
                    self.result.actions[i] = Action(a.kind, a.target,
                                                    tuple(dict.fromkeys(a.flags + action.flags)),
                                                    a.copy and action.copy)
                return
        if len(self.result.actions) >= self.limits.max_actions:
            raise SieveRuntimeError(f"more than {self.limits.max_actions} actions")
        self.result.actions.append(action)

    # -- commands ---------------------------------------------------------
    def _block(self, cmds: list[Command]) -> None:
        for c in cmds:
            self._step()
            self._command(c)

    def _command(self, c: Command) -> None:
        name = c.name
        if name == "require":
            return
        if name == "if":
            for branch in [c, *c.branches]:
                if branch.test is None or self._test(branch.test):
                    self._block(branch.block or [])
                    return
            return
        if name == "stop":
            raise _Stop
        if name == "keep":
            self._add(Action("keep", "INBOX", self._flags_tag(c)))
            self.result.implicit_keep = False
        elif name == "discard":
            self.result.implicit_keep = False
        elif name == "fileinto":
            self._add(Action("fileinto", self._s(c.args[0]), self._flags_tag(c),
                             copy=":copy" in c.tags))
            if ":copy" not in c.tags:
                self.result.implicit_keep = False
        elif name == "redirect":
            addr = self._s(c.args[0]).strip()
            if "@" not in addr or any(ch in addr for ch in " <>\r\n,"):
                raise SieveRuntimeError(f"redirect to an invalid address {addr!r}")
            self._add(Action("redirect", addr, copy=":copy" in c.tags))
            if ":copy" not in c.tags:
                self.result.implicit_keep = False
        elif name in ("reject", "ereject"):
            self._add(Action(name, self._s(c.args[0])))
            self.result.implicit_keep = False
        elif name in ("setflag", "addflag", "removeflag"):
            self._flag_command(c)
        elif name == "set":
            self._set(c)
        elif name == "vacation":
            self._vacation(c)
        else:
            raise SieveRuntimeError(f"command '{name}' cannot run")

    def _flags_tag(self, c: Command) -> tuple[str, ...]:
        if ":flags" in c.tags:
            return tuple(_split_flags(self._sl(c.tags[":flags"])))
        return tuple(self.flags)

    def _flag_command(self, c: Command) -> None:
        var, items = c.args
        new = _split_flags(self._sl(items))
        current = _split_flags([self.vars.get(str(var).lower(), "")]) if var else self.flags
        low = {f.lower() for f in new}
        if c.name == "setflag":
            current = new
        elif c.name == "addflag":
            have = {f.lower() for f in current}
            current = current + [f for f in new if f.lower() not in have]
        else:
            current = [f for f in current if f.lower() not in low]
        current = list(dict.fromkeys(current))
        if var:
            self._store_var(str(var), " ".join(current))
        else:
            self.flags = current

    def _store_var(self, name: str, value: str) -> None:
        if name.lower() not in self.vars and len(self.vars) >= MAX_VARIABLES:
            raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
        self.vars[name.lower()] = value[:MAX_VARIABLE_LEN]

    def _set(self, c: Command) -> None:
        value = self._s(c.args[1])
        t = c.tags
        if ":lower" in t:
            value = value.lower()
        if ":upper" in t:
            value = value.upper()
        if ":lowerfirst" in t:
            value = value[:1].lower() + value[1:]
        if ":upperfirst" in t:
            value = value[:1].upper() + value[1:]
        if ":quotewildcard" in t:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if ":length" in t:
            value = str(len(value))
        self._store_var(str(c.args[0]), value)

    def _vacation(self, c: Command) -> None:
        t = c.tags
        if ":seconds" in t:
            seconds = int(t[":seconds"])  # type: ignore[call-overload]
        else:
            seconds = int(t.get(":days", 7)) * 86400  # type: ignore[call-overload]
        reason = self._s(c.args[0])
        subject = self._s(t[":subject"]) if ":subject" in t else None
        handle = self._s(t[":handle"]) if ":handle" in t else ""
        if not handle:  # RFC 5230 §4.2: same reason and subject, same handle
            handle = f"{subject or ''}\x00{reason}"
        self._add(Action("vacation", vacation=Vacation(
            reason, subject, self._s(t[":from"]) if ":from" in t else None,
            tuple(self._sl(t.get(":addresses", []))), seconds, handle, ":mime" in t,
            ":known" in t)))

    # -- tests ------------------------------------------------------------
    def _test(self, t: Test) -> bool:
        self._step()
        name = t.name
        if name == "allof":
            return all(self._test(x) for x in t.tests)
        if name == "anyof":
            return any(self._test(x) for x in t.tests)
        if name == "not":
            return not self._test(t.tests[0])
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "size":
            limit = int(t.args[0])  # type: ignore[call-overload]
            return self.msg.size > limit if ":over" in t.tags else self.msg.size < limit
        if name == "exists":
            return all(self.msg.raw_headers(h) for h in self._sl(t.args[0]))
        if name == "header" and ":mime" in t.tags:
            option = next((o[1:] for o in (":type", ":subtype", ":contenttype", ":param")
                           if o in t.tags), "")
            params = self._sl(t.tags[":param"]) if option == "param" else []
            values = self.msg.mime_headers(self._sl(t.args[0]), option, params,
                                           ":anychild" in t.tags)
            self._step(len(values))
            return self._match(t, values, self._sl(t.args[1]))
        if name == "header":
            values = [v for h in self._sl(t.args[0]) for v in self.msg.headers(h)]
            return self._match(t, values, self._sl(t.args[1]))
        if name == "address":
            values = [v for h in self._sl(t.args[0]) for v in self.msg.addresses(h)]
            return self._match(t, [p for v in values if (p := _part(t, v)) is not None],
                               self._sl(t.args[1]))
        if name == "envelope":
            values = []
            for part in t.args[0]:  # type: ignore[attr-defined]
                v = self.msg.envelope_from if part.lower() == "from" else self.msg.envelope_to
                if v or part.lower() == "from":
                    p = _part(t, v) if v else ""
                    if p is not None:
                        values.append(p)
            return self._match(t, values, self._sl(t.args[1]))
        if name == "body":
            text = self.msg.body_raw() if ":raw" in t.tags else self._body_text(t)
            self._step(len(text) // 4096)
            return self._match(t, [text] if text is not None else [], self._sl(t.args[0]))
        if name == "string":
            return self._match(t, self._sl(t.args[0]), self._sl(t.args[1]))
        if name == "hasflag":
            var = t.args[0]
            flags = _split_flags(
                [self.vars.get(str(v).lower(), "") for v in var]  # type: ignore[attr-defined]
            ) if var else self.flags
            return self._match(t, flags, self._sl(t.args[1]))
        if name in ("date", "currentdate"):
            return self._date(t)
        raise SieveRuntimeError(f"test '{name}' cannot run")

    def _body_text(self, t: Test) -> str | None:
        content = t.tags.get(":content")
        if content is not None and not any(
                c.lower() in ("", "text", "text/plain", "text/html") for c in content):  # type: ignore[attr-defined]
            return None  # only text parts are decoded for tests
        return self.msg.body_text()

    def _date(self, t: Test) -> bool:
        if t.name == "date":
            header, part, keys = t.args
            values = self.msg.headers(self._s(header))
            if not values:
                return False
            d = parse_date(values[-1] if str(header).lower() == "received" else values[0])
            if d is None:
                return False
        else:
            part, keys = t.args
            d = self.now
        zone = t.tags.get(":zone")
        if zone is not None:
            tz = parse_zone(self._s(zone))
            if tz is None:
                return False
            d = d.astimezone(tz)
        elif ":originalzone" not in t.tags and t.name == "date":
            d = d.astimezone(self.zone)  # RFC 5260: the local zone unless told otherwise
        elif t.name == "currentdate":
            d = d.astimezone(self.zone)
        return self._match(t, [date_part(d, str(part).lower())], self._sl(keys))

    def _match(self, t: Test, values: list[str], keys: list[str]) -> bool:
        m = t.matcher
        if m is None:
            m = t.matcher = Matcher(t.tags)
        if m.kind == "count":
            return m.count(values, keys)
        self._step(len(values) * len(keys))
        c = m.comparator
        if m.kind in ("is", "contains", "matches") and c != "i;ascii-numeric":
            cached = m.folded_keys
            if cached is not None and cached[0] is keys:  # the parsed list: fold once
                fkeys = cached[1]
            else:
                fkeys = [fold(k, c) for k in keys]
                if not self.variables:
                    m.folded_keys = (keys, fkeys)
            for v in values:
                fv = self._fold(v, c)
                for k, fk in zip(keys, fkeys, strict=True):
                    if m.kind == "is":
                        hit = fv == fk
                    elif m.kind == "contains":
                        hit = fk in fv
                    else:
                        hit = wildcard(fv, fk)
                    if hit:
                        if m.kind == "matches" and self.variables:
                            self.match_vars = [v, *glob_captures(v, k, c)]
                        return True
            return False
        for v in values:
            for k in keys:
                if m.one(v, k):
                    return True
        return False


def _part(t: Test, addr: str) -> str | None:
    local, at, domain = addr.rpartition("@")
    if not at:
        local, domain = addr, ""
    tags = t.tags
    if ":localpart" in tags:
        return local
    if ":domain" in tags:
        return domain
    if ":user" in tags or ":detail" in tags:
        user, plus, detail = local.partition("+")
        if ":user" in tags:
            return user
        return detail if plus else None
    return addr


def _split_flags(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend(f for f in item.split() if f)
    return list(dict.fromkeys(out))


def evaluate(script: Script, msg: MessageContext, limits: Limits | None = None, *,
             now: datetime | None = None, zone: tzinfo | None = None) -> Result:
    return Interpreter(script, msg, limits, now, zone).run()

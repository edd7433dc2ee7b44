"""Exmail's structured receive rules (manual §5.3.8) as Sieve.

The Sieve script is the source of truth: the rules are stored only as the
member's script named `exmail-rules`, which ManageSieve clients see and may
edit like any other. Each rule is written as a comment line holding the rule
as JSON followed by the Sieve it compiles to. Reading the rules back parses
those comments and compiles each rule again: a rule whose Sieve was edited
by hand no longer matches its comment and is reported as `custom`, so the
structured face never silently overwrites what someone wrote in Sieve.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from exmaild.sieve.parser import parse

SCRIPT_NAME = "exmail-rules"
# Send rules (manual §5.3.8 发信规则) run on the Sent copy of mail a member
# submits through SMTP (exmaild/sieve/sendrules.py). They are a script of
# their own, never the active one: the active script is for mail received.
SEND_SCRIPT = "exmail-send-rules"
KINDS = ("receive", "send")
SEND_FIELDS = ("to", "cc", "to_or_cc", "subject", "size", "attachment")
SEND_ACTIONS = ("move", "copy", "tag", "mark_read")
MARK = "# exmail-rule "
VACATION_MARK = "# exmail-vacation "
REQUIRE = ('require ["fileinto", "imap4flags", "body", "copy", "vacation", "relational", '
           '"comparator-i;ascii-numeric", "date", "mime", "vnd.exmaild.vacation-known"];\n')
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_KEEP: Any = object()  # save(): keep the vacation the script has
FIELDS = ("from", "to", "cc", "to_or_cc", "sender_domain", "only_to_me", "subject", "body",
          "size", "attachment", "date", "weekday", "time")
OPS = ("contains", "not_contains", "is", "matches", "over", "under", "before", "after",
       "between")
# An attachment's name: the filename (Content-Disposition) or name
# (Content-Type) parameter of any part, RFC 2231/2047 decoded (RFC 5703).
_ATTACHMENT = ('header :mime :anychild :param ["filename", "name"] {match} '
               '["Content-Disposition", "Content-Type"] {value}')
ACTIONS = ("move", "copy", "delete", "tag", "mark_read", "reply", "forward")
MAX_FORWARD = 3


class RuleError(Exception):
    pass


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _condition(c: dict[str, Any], me: str) -> str:
    field, op, value = c.get("field"), c.get("op", "contains"), c.get("value", "")
    if field not in FIELDS:
        raise RuleError(f"unknown condition field {field!r}")
    if field == "only_to_me":
        return (f'allof (address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "1", '
                f'address :is "to" {_q(me)})')
    if field in ("date", "weekday", "time"):
        return _when(field, op, value)
    if field == "size":
        if op not in ("over", "under") or not isinstance(value, int) or value < 0:
            raise RuleError("size needs op over/under and a number of octets")
        return f"size :{op} {value}"
    if op not in ("contains", "not_contains", "is", "matches"):
        raise RuleError(f"unknown operator {op!r} for {field}")
    if not isinstance(value, str) or not value:
        raise RuleError(f"{field} needs a text value")
    match = ":contains" if op in ("contains", "not_contains") else f":{op}"
    if field == "attachment":
        test = _ATTACHMENT.format(match=match, value=_q(value))
    elif field == "sender_domain":
        test = f'address :domain {match} "from" {_q(value)}'
    elif field == "body":
        test = f"body :text {match} {_q(value)}"
    else:
        headers = '["to", "cc"]' if field == "to_or_cc" else _q(field)
        test = f"header {match} {headers} {_q(value)}"
    return f"not {test}" if op == "not_contains" else test


def _when(field: str, op: str, value: Any) -> str:
    """The date a message is received (the time of delivery, in the
    enterprise's time zone): a day range, weekdays, or a time of day."""
    if field == "weekday":
        days = value if isinstance(value, list) else [value]
        if op != "is" or not days or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in days):
            raise RuleError("weekday needs op is and days 0 (Sunday) to 6")
        return f'currentdate :is "weekday" [{", ".join(_q(str(d)) for d in days)}]'
    if field == "date":
        pattern, part, what = _DAY, "date", "a date YYYY-MM-DD"
    else:
        pattern, part, what = _TIME, "time", "a time HH:MM"
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise RuleError(f"{field} between needs two values, each {what}")
        lo, hi = value
    elif op in ("before", "after"):
        lo = hi = value
    else:
        raise RuleError(f"{field} needs op before, after or between")
    for v in (lo, hi):
        if not isinstance(v, str) or not pattern.fullmatch(v):
            raise RuleError(f"{field} needs {what}")
    if part == "time":  # "09:00" as the date part "time" compares: "09:00:00"
        lo, hi = lo + ":00", hi + ":00"
    ge = f'currentdate :value "ge" "{part}" {_q(lo)}'
    if op == "after":
        return f'currentdate :value "gt" "{part}" {_q(lo)}' if part == "date" else ge
    if op == "before":
        return f'currentdate :value "lt" "{part}" {_q(hi)}'
    if part == "date":  # both days included
        return f'allof ({ge}, currentdate :value "le" "{part}" {_q(hi)})'
    lt = f'currentdate :value "lt" "{part}" {_q(hi)}'
    # A time range may run over midnight (22:00 to 06:00).
    return f"allof ({ge}, {lt})" if lo <= hi else f"anyof ({ge}, {lt})"


def _action(a: dict[str, Any]) -> list[str]:
    kind, value = a.get("type"), a.get("value")
    if kind not in ACTIONS:
        raise RuleError(f"unknown action {kind!r}")
    if kind in ("move", "copy", "tag"):
        if not isinstance(value, str) or not value.strip():
            raise RuleError(f"{kind} needs a folder or tag name")
    if kind == "move":
        return [f"fileinto {_q(value)};"]  # type: ignore[arg-type]
    if kind == "copy":
        return [f"fileinto :copy {_q(value)};"]  # type: ignore[arg-type]
    if kind == "delete":
        return ["discard;"]
    if kind == "tag":
        return [f"addflag {_q(value)};"]  # type: ignore[arg-type]
    if kind == "mark_read":
        return ['addflag "\\\\Seen";']
    if kind == "reply":
        if not isinstance(value, str) or not value or len(value) > 400:
            raise RuleError("reply needs a text of at most 400 characters")
        return [f"vacation :days 1 {_q(value)};"]
    addrs = value if isinstance(value, list) else [value]
    if not addrs or len(addrs) > MAX_FORWARD or not all(
            isinstance(x, str) and "@" in x for x in addrs):
        raise RuleError(f"forward needs 1 to {MAX_FORWARD} addresses")
    copy = ":copy " if a.get("keep", True) else ""
    return [f"redirect {copy}{_q(x.strip())};" for x in addrs]


@dataclass
class Rule:
    data: dict[str, Any]
    custom: bool = False  # its Sieve was edited by hand


def compile_rule(rule: dict[str, Any], me: str) -> str:
    """One rule as its marker comment and Sieve."""
    conds = rule.get("conditions") or []
    acts = rule.get("actions") or []
    if not conds or not acts:
        raise RuleError("a rule needs at least one condition and one action")
    if rule.get("match", "all") not in ("all", "any"):
        raise RuleError("match is all or any")
    kind = rule.get("kind", "receive")
    if kind not in KINDS:
        raise RuleError("kind is receive or send")
    if kind == "send":
        for c in conds:
            if c.get("field") not in SEND_FIELDS:
                raise RuleError(f"a send rule's conditions are {', '.join(SEND_FIELDS)}")
        for a in acts:
            if a.get("type") not in SEND_ACTIONS:
                raise RuleError(f"a send rule's actions are {', '.join(SEND_ACTIONS)}")
    tests = [_condition(c, me) for c in conds]
    test = tests[0] if len(tests) == 1 else (
        f"{'allof' if rule.get('match', 'all') == 'all' else 'anyof'} ({', '.join(tests)})")
    if not rule.get("enabled", True):
        test = f"allof (false, {test})"
    # Flags first: a fileinto takes the flags set before it.
    ordered = sorted(acts, key=lambda a: a.get("type") not in ("tag", "mark_read"))
    body = [line for a in ordered for line in _action(a)]
    if rule.get("stop"):
        body.append("stop;")
    marker = MARK + json.dumps(rule, ensure_ascii=False, sort_keys=True)
    return marker + "\n" + f"if {test} {{\n" + "".join(f"  {b}\n" for b in body) + "}\n"


def compile_vacation(v: dict[str, Any]) -> str:
    """The auto-reply (manual §5.6.5) as its marker comment and Sieve: a
    vacation action inside its date range (RFC 5230 keeps one reply per
    sender per `days`, and never answers lists or automatic mail)."""
    text, subject = v.get("text"), v.get("subject", "")
    if not isinstance(text, str) or not text.strip() or len(text) > 400:
        raise RuleError("the auto-reply needs a text of at most 400 characters")
    if not isinstance(subject, str) or len(subject) > 200:
        raise RuleError("the auto-reply subject is at most 200 characters")
    days = v.get("days", 1)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365:
        raise RuleError("days is a number from 1 to 365")
    tests = ["true" if v.get("enabled", True) else "false"]
    for key, rel in (("start", "ge"), ("end", "le")):
        day = v.get(key)
        if day is None:
            continue
        if not isinstance(day, str) or not _DAY.fullmatch(day):
            raise RuleError(f"{key} is a date YYYY-MM-DD")
        tests.append(f'currentdate :value "{rel}" "date" {_q(day)}')
    if v.get("start") and v.get("end") and v["start"] > v["end"]:
        raise RuleError("start is after end")
    known = v.get("known_only", False)
    if not isinstance(known, bool):
        raise RuleError("known_only is true or false")
    subj = (":known " if known else "") + (f":subject {_q(subject)} " if subject else "")
    marker = VACATION_MARK + json.dumps(v, ensure_ascii=False, sort_keys=True)
    return (f"{marker}\nif allof ({', '.join(tests)}) {{\n"
            f"  vacation :days {days} {subj}{_q(text)};\n}}\n")


def read_vacation(text: str) -> Rule | None:
    """The auto-reply of an `exmail-rules` script (custom: edited by hand)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(VACATION_MARK):
            try:
                data = json.loads(line[len(VACATION_MARK):])
                expected = compile_vacation(data)
            except (ValueError, RuleError, AttributeError):
                return Rule({}, custom=True)
            got = "".join(lines[i : i + expected.count("\n")]).replace("\r\n", "\n")
            return Rule(data, custom=got != expected)
    return None


def compile_rules(rules: list[dict[str, Any]], me: str,
                  vacation: dict[str, Any] | None = None) -> str:
    text = "# Exmail rules (manual 5.3.8); edit with exmailctl rules or by hand.\n" + REQUIRE
    # The auto-reply comes first: a rule's "stop" must not silence it.
    text += compile_vacation(vacation) if vacation else ""
    text += "".join(compile_rule(r, me) for r in rules)
    parse(text)  # what we write must be valid Sieve
    return text


def read_rules(text: str, me: str) -> list[Rule]:
    """The rules of an `exmail-rules` script, each marked custom when its
    Sieve differs from what it compiles to."""
    out: list[Rule] = []
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith(MARK):
            continue
        try:
            data = json.loads(line[len(MARK):])
        except ValueError:
            continue
        try:
            expected = compile_rule(data, me)
        except RuleError:
            out.append(Rule(data, custom=True))
            continue
        n = expected.count("\n")
        got = "".join(lines[i : i + n]).replace("\r\n", "\n")
        out.append(Rule(data, custom=got != expected))
    return out


def compile_send_rules(rules: list[dict[str, Any]], me: str) -> str:
    text = ("# Exmail send rules (manual 5.3.8): run on the Sent copy of mail sent through "
            "SMTP.\n" + REQUIRE + "".join(compile_rule(r, me) for r in rules))
    parse(text)
    return text


async def load(scripts: Any, account_id: int, me: str) -> list[Rule]:
    """The receive rules, then the send rules (each with "kind": "send")."""
    text = await scripts.get(account_id, SCRIPT_NAME)
    out = read_rules(text, me) if text is not None else []
    out = [r for r in out if r.data.get("kind", "receive") != "send"]
    sent = await scripts.get(account_id, SEND_SCRIPT)
    if sent is not None:
        out += [r for r in read_rules(sent, me) if r.data.get("kind") == "send"]
    return out


async def load_vacation(scripts: Any, account_id: int) -> Rule | None:
    text = await scripts.get(account_id, SCRIPT_NAME)
    return read_vacation(text) if text is not None else None


async def save(scripts: Any, account_id: int, me: str, rules: list[Rule],
               vacation: dict[str, Any] | None = _KEEP) -> None:
    """Write the rules (and the auto-reply: by default the one the script
    has) as the member's `exmail-rules` script and make it the active one.
    Refused while a part was edited by hand (it would be lost)."""
    for n, r in enumerate(rules, 1):
        if r.custom:
            where = SEND_SCRIPT if r.data.get("kind") == "send" else SCRIPT_NAME
            raise RuleError(f"rule {n} was edited in Sieve; edit the {where} script instead")
    if vacation is _KEEP:
        old = await load_vacation(scripts, account_id)
        if old is not None and old.custom:
            raise RuleError(f"the auto-reply was edited in Sieve; edit the {SCRIPT_NAME} "
                            "script instead")
        vacation = old.data if old is not None else None
    send = [r.data for r in rules if r.data.get("kind") == "send"]
    receive = [r.data for r in rules if r.data.get("kind") != "send"]
    if send or await scripts.get(account_id, SEND_SCRIPT) is not None:
        await scripts.put(account_id, SEND_SCRIPT, compile_send_rules(send, me))
    await scripts.put(account_id, SCRIPT_NAME, compile_rules(receive, me, vacation))
    await scripts.activate(account_id, SCRIPT_NAME)

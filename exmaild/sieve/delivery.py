"""Running recipients' active Sieve scripts in the SMTP delivery path.

`plan()` runs before the one ingest request is made and turns each script's
actions into placement (mailbox, flags, keywords) and work for the queue.
Whatever goes wrong for one recipient (a script that fails to parse or run,
a folder that does not exist, an engine fault) leaves that recipient with
implicit keep into the mailbox delivery would have used anyway, and a log
line says why: a rule can never lose a message.
"""

from __future__ import annotations

import hashlib
import zoneinfo
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import sqlalchemy as sa
from twisted.internet import task
from twisted.logger import Logger

from exmaild.mailstore.ingest import Target
from exmaild.sieve import entfilters
from exmaild.sieve.errors import SieveError
from exmaild.sieve.interp import Action, Limits, Vacation, evaluate
from exmaild.sieve.message import MessageContext
from exmaild.sieve.scripts import ScriptStore
from exmaild.sieve.senders import decide
from exmaild.store import flags as F
from exmaild.store import model as m

log = Logger(namespace="exmaild.sieve")

# A message that has passed through this many Received: fields is not
# redirected again (RFC 5321 §6.3 loop detection; Postfix uses 50 hops).
MAX_HOPS = 25


@dataclass
class Recipient:
    account_id: int
    address: str  # the envelope recipient (a group member's own address)


@dataclass
class Plan:
    """What the scripts decided, by account; accounts absent keep the default."""

    targets: dict[int, list[Target]] = field(default_factory=dict)
    redirects: list[tuple[int, str]] = field(default_factory=list)  # remote, via the queue
    vacations: list[tuple[Recipient, Vacation]] = field(default_factory=list)
    rejects: dict[int, str] = field(default_factory=dict)
    context: MessageContext | None = None
    queued: list[tuple[str, list[str]]] = field(default_factory=list)  # redirect queue ids
    senders: dict[int, str] = field(default_factory=dict)  # envelope sender of redirects
    traces: dict[int, str] = field(default_factory=dict)  # Delivered-To of redirected copies
    blocked: set[int] = field(default_factory=set)  # sender lists say refuse
    block_reason: str = ""  # the 550 text when an enterprise filter refuses

    def targets_for(self, account_id: int, default: str) -> list[Target]:
        return self.targets.get(account_id, [Target(account_id, default)])


def scripts_of(app: Any) -> ScriptStore:
    """The daemon's one ScriptStore (parsed-script cache), made on first use."""
    s = getattr(app, "_sieve_scripts", None)
    if s is None:
        s = ScriptStore(app.store.pool, app.cfg.sieve, app.cfg.smtp.lookup_cache_ttl)
        app._sieve_scripts = s
    return s


def zone_of(cfg: Any) -> tzinfo | None:
    """The enterprise time zone ([exmail_api] timezone) Sieve dates use."""
    try:
        return zoneinfo.ZoneInfo(cfg.exmail_api.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, AttributeError):
        return None


def limits_of(cfg: Any) -> Limits:
    c = cfg.sieve
    return Limits(max_actions=c.max_actions, max_redirects=c.max_redirects,
                  max_steps=c.max_steps, max_cpu_ms=c.max_cpu_ms)


async def plan(app: Any, queue_id: str, recipients: list[Recipient], data: Any, *,
               head: bytes, start: int, sender: str, default_box: str) -> Plan | None:
    """The decisions of the recipients' sender lists and scripts, or None when
    no recipient has either."""
    if not app.cfg.sieve.enabled or not recipients:
        return None
    scripts = scripts_of(app)
    with_rules = await scripts.accounts_with_rules()
    ids = sorted({r.account_id for r in recipients} & with_rules)
    if not ids:
        return None

    active, lists, ents = await scripts.rules_for(ids)
    if not active and not lists and not ents:
        return None
    out = Plan()
    try:
        base = MessageContext.from_bytes(data, envelope_from=sender, envelope_to="",
                                         head=head, start=start)
    except Exception:
        log.failure("{queue_id}: cannot read the message for Sieve; implicit keep",
                    queue_id=queue_id)
        return None
    out.context = base
    senders = [sender, *base.addresses("from")[:1]]
    subject = " ".join(base.headers("subject")) if ents else ""
    limits = limits_of(app.cfg)
    zone = zone_of(app.cfg)
    seen: set[int] = set()
    for r in recipients:
        aid = r.account_id
        got = active.get(aid)
        if aid in seen or (got is None and aid not in lists and aid not in ents):
            continue
        seen.add(aid)
        if len(seen) % 50 == 0:  # a big group: let other connections run between
            await task.deferLater(app.reactor, 0, lambda: None)
        box = default_box
        # The enterprise's filters first (manual §4.4.4), then the member's.
        ent = entfilters.decide(ents[aid], senders, subject) if aid in ents else None
        if ent is not None and ent[0] != "allow":
            log.info("{queue_id}: <{sender}> to <{rcpt}>: enterprise filter, {why} "
                     "({action})", queue_id=queue_id, sender=sender, rcpt=r.address or aid,
                     why=ent[1], action=ent[0])
            out.targets[aid] = [Target(aid, "\\Junk")]
            if ent[0] == "refuse":
                out.blocked.add(aid)
                out.block_reason = "Refused by the recipient's organisation's mail filter"
            continue
        verdict = decide(lists[aid], senders) if aid in lists else None
        if verdict in ("junk", "refuse"):
            # Blocked: no script runs; Junk unless refused (and, when SMTP
            # cannot refuse it for this recipient alone, Junk even then).
            log.info("{queue_id}: sender <{sender}> blocked by <{rcpt}> ({action})",
                     queue_id=queue_id, sender=sender, rcpt=r.address or aid, action=verdict)
            out.targets[aid] = [Target(aid, "\\Junk")]
            if verdict == "refuse":
                out.blocked.add(aid)
            continue
        skip_junk = verdict == "allow" or ent is not None
        if skip_junk:
            box = "INBOX"  # an allowed sender skips the Junk decision
            out.targets[aid] = [Target(aid, box)]
        if got is None:
            continue
        text = got[0]
        r = Recipient(aid, r.address or got[1])
        try:
            result = evaluate(scripts.parsed(text), base.for_recipient(r.address), limits,
                              zone=zone)
            if skip_junk:
                out.targets.pop(aid, None)
            await _apply(app, queue_id, out, r, result.effective, box, base, got[1])
        except SieveError as e:
            log.warn("{queue_id}: Sieve script of <{rcpt}> failed ({error}); kept in {box}",
                     queue_id=queue_id, rcpt=r.address, error=str(e), box=box)
            out.targets[aid] = [Target(aid, box)]
        except Exception:
            log.failure("{queue_id}: Sieve engine fault for <{rcpt}>; kept in {box}",
                        queue_id=queue_id, rcpt=r.address, box=box)
            out.targets[aid] = [Target(aid, box)]
    return out


async def _apply(app: Any, queue_id: str, out: Plan, r: Recipient, actions: list[Action],
                 default_box: str, msg: MessageContext, primary: str = "") -> None:
    aid = r.account_id
    targets: list[Target] = []
    redirects: list[str] = []
    for a in actions:
        if a.kind in ("keep", "fileinto"):
            mask, keywords = F.from_names(list(a.flags))
            box = default_box
            if a.kind == "fileinto" and a.target.upper() != "INBOX":
                if await app.store.mailboxes.get(aid, a.target) is None:
                    log.warn("{queue_id}: Sieve fileinto {folder!r} of <{rcpt}>: no such "
                             "folder; kept in {box}", queue_id=queue_id, folder=a.target,
                             rcpt=r.address, box=default_box)
                else:
                    box = a.target
            t = Target(aid, box, mask, keywords)
            if all(x.mailbox != box for x in targets):
                targets.append(t)
        elif a.kind == "redirect":
            # Reached as an alias before, or the other way round: either counts.
            if delivered_to(msg, r.address) or (primary and delivered_to(msg, primary)):
                # RFC 9228: this member's delivery already forwarded it once.
                log.warn("{queue_id}: Sieve redirect of <{rcpt}> to <{to}> refused: the "
                         "message already has Delivered-To: {rcpt} (a loop); kept",
                         queue_id=queue_id, rcpt=r.address, to=a.target)
                if all(t.mailbox != default_box for t in targets):
                    targets.append(Target(aid, default_box))
                continue
            hops = len(msg.raw_headers("received"))
            if hops >= MAX_HOPS:
                log.warn("{queue_id}: Sieve redirect of <{rcpt}> to <{to}> refused: {hops} "
                         "hops (a loop?); kept", queue_id=queue_id, rcpt=r.address,
                         to=a.target, hops=hops)
                targets.append(Target(aid, default_box))
                continue
            redirects.append(a.target)
        elif a.kind in ("reject", "ereject"):
            out.rejects[aid] = a.target
        elif a.kind == "vacation" and a.vacation is not None:
            out.vacations.append((r, a.vacation))
    for addr in redirects:
        local = await app.store.directory.get_account(addr)
        if local is not None:
            # A local redirect is placed directly (not through the queue),
            # into the INBOX: the target's own script does not run again,
            # which also makes local redirect loops impossible.
            if local.id == aid:
                if not targets:
                    targets.append(Target(aid, default_box))
                continue
            out.targets.setdefault(local.id, [])
            extra = out.targets[local.id]
            if not any(t.mailbox == "INBOX" for t in extra):
                extra.append(Target(local.id, "INBOX", optional=True))
        elif not await _may_forward_outside(app, aid):
            log.warn("{queue_id}: Sieve redirect of <{rcpt}> to <{to}> refused: the "
                     "member may not forward outside the enterprise's domains; kept",
                     queue_id=queue_id, rcpt=r.address, to=addr)
            if not targets:
                targets.append(Target(aid, default_box))
        else:
            out.redirects.append((aid, addr))
            out.traces[aid] = f"Delivered-To: {r.address}\r\n"
            if aid not in out.senders:
                out.senders[aid] = await _forward_sender(app, msg.envelope_from, r.address)
    if aid in out.rejects and not targets:
        out.targets[aid] = []
        return
    # An account already given targets by another's redirect keeps those too.
    out.targets[aid] = out.targets.get(aid, []) + targets
    if not targets:
        log.info("{queue_id}: Sieve of <{rcpt}> discarded its copy", queue_id=queue_id,
                 rcpt=r.address)


def delivered_to(msg: MessageContext, address: str) -> bool:
    """Whether a Delivered-To: field of the message names `address`."""
    a = address.strip().lower()
    return any(v.strip().strip("<>").strip().lower() == a
               for v in msg.raw_headers("delivered-to"))


async def _may_forward_outside(app: Any, account_id: int) -> bool:
    """The member's forwarding override, else its enterprise's forward_outside."""
    from exmaild.sieve.forwarding import may_forward_outside

    return await app.store.pool.do(lambda conn: may_forward_outside(conn, account_id))


async def _forward_sender(app: Any, sender: str, member: str) -> str:
    """The envelope sender of a redirected copy: SRS at the member's domain
    unless the sender is null or of a domain hosted here."""
    domain = sender.rpartition("@")[2].lower()
    if not sender or not domain or await app.store.directory.get_domain(domain) is not None:
        return sender
    from exmaild.sieve.srs import srs_for

    srs = getattr(app, "_sieve_srs", None)
    if srs is None:
        srs = app._sieve_srs = srs_for(app.cfg)
    return srs.forward(sender, member.rpartition("@")[2].lower())


def vacation_key(sender: str, handle: str) -> tuple[str, str]:
    return sender.lower()[:320], hashlib.sha256(handle.encode("utf-8")).hexdigest()


def claim_vacation(conn: sa.Connection, account_id: int, sender: str, handle: str,
                   now: int, seconds: int) -> bool:
    """True if no reply to `sender` under `handle` went out within the period;
    then records this one (RFC 5230 §4.2)."""
    who, h = vacation_key(sender, handle)
    t = m.vacation_replies
    key = sa.and_(t.c.account_id == account_id, t.c.sender == who, t.c.handle == h)
    row = conn.execute(sa.select(t.c.expires).where(key)).first()
    if row is not None and row[0] > now:
        return False
    if row is not None:
        conn.execute(t.update().where(key).values(expires=now + seconds))
        return True
    try:
        with conn.begin_nested():  # two messages of one sender delivered at once
            conn.execute(t.insert().values(account_id=account_id, sender=who, handle=h,
                                           expires=now + seconds))
    except sa.exc.IntegrityError:
        return False  # the other delivery claimed the reply
    return True

"""The spam checks in the MX's SMTP dialogue (called by protocols/smtp/server.py).

Only for the MX listener and unauthenticated clients, like the mailauth
checks. The DNSBL lookup starts at the first MAIL FROM of a connection;
rspamd is asked at the end of DATA, after the mailauth checks, and its
verdict joins theirs (the same `Verdict`: Junk placement, header fields, the
mail log line)."""

from __future__ import annotations

import weakref
from typing import Any

from exmaild.mailauth.inbound import Verdict
from exmaild.protocols.smtp.replies import Reply
from exmaild.spam import dnsbl
from exmaild.spam.rspamd import Rspamd, SpamResult

X_SPAM = (b"X-Spam", b"X-Spam-Score", b"X-Spam-Action", b"X-Spam-Status", b"X-Spam-Flag")


class SpamContext:
    def __init__(self, app: Any) -> None:
        self.cfg = app.cfg.spam
        self.rspamd = Rspamd(app.reactor, self.cfg) if self.cfg.rspamd else None
        if self.rspamd is not None:
            app.reactor.addSystemEventTrigger("before", "shutdown", self.rspamd.close)


_contexts: weakref.WeakKeyDictionary[Any, SpamContext] = weakref.WeakKeyDictionary()


def context_for(app: Any) -> SpamContext:
    ctx = _contexts.get(app.store)
    if ctx is None or ctx.cfg is not app.cfg.spam:
        ctx = _contexts[app.store] = SpamContext(app)
    return ctx


def _applies(session: Any) -> bool:
    return session.flavour.service == "smtp" and session.account is None


def on_mail(app: Any, session: Any) -> None:
    """At MAIL FROM: start the DNSBL lookup (once per connection)."""
    zones = app.cfg.spam.dnsbl_zones
    if not zones or session.dnsbl is not None or not _applies(session):
        return
    from exmaild.mailauth.inbound import context_for as auth_context

    session.dnsbl = dnsbl.start(auth_context(app).resolver, session.ip, zones)


async def rcpt_refusal(app: Any, session: Any) -> Reply | None:
    """At RCPT: 554 5.7.1 for a listed client when dnsbl_action is reject."""
    if not wants_rcpt_wait(app, session):
        return None
    listing = await dnsbl.wait(session.dnsbl)
    if listing.listed:
        return Reply(554, "5.7.1", dnsbl.refusal_text(session.ip, listing))
    return None


def wants_rcpt_wait(app: Any, session: Any) -> bool:
    # _applies again: a client may authenticate (AUTH on the MX) after its first MAIL.
    return (session.dnsbl is not None and app.cfg.spam.dnsbl_action == "reject"
            and _applies(session))


def enabled(app: Any, session: Any) -> bool:
    """Whether end_of_data has anything to do for this session."""
    cfg = app.cfg.spam
    return _applies(session) and (cfg.rspamd or session.dnsbl is not None)


async def end_of_data(app: Any, session: Any, txn: Any, message: bytes,
                      verdict: Verdict | None) -> Verdict:
    """The mailauth verdict (or a new one) with the spam checks' results added:
    a refusal, Junk and X-Spam fields, the mail log's verdicts."""
    v = verdict if verdict is not None else Verdict(b"", authserv_id=app.cfg.server.hostname)
    if session.dnsbl is not None:
        listing = await dnsbl.wait(session.dnsbl)
        v.results["dnsbl"] = f"listed({listing.zone})" if listing.listed else listing.result
        if listing.listed:
            v.reasons.append(f"client listed in {listing.zone}")
            v.junk = True  # dnsbl_action "junk" (a "reject" never got this far)
            v.header += f"X-Spam: Yes\r\nX-Spam-Action: dnsbl {listing.zone}\r\n".encode()
            v.strip = (*v.strip, *X_SPAM)
    ctx = context_for(app)
    if ctx.rspamd is None:
        return v
    v.strip = tuple(dict.fromkeys((*v.strip, *X_SPAM)))
    res = await ctx.rspamd.check(
        message, ip=session.ip, helo=session.helo or "", sender=txn.sender,
        rcpts=[r.address for r in txn.recipients], queue_id=txn.queue_id,
        user=session.account.address if session.account is not None else None)
    if res is None:
        v.results["spam"] = "unchecked"
        return v
    v.results["spam"] = res.action.replace(" ", "_")
    v.results["spam_score"] = f"{res.score:.2f}"
    ours = res.ours
    if ours == "reject" and v.refusal is None:
        v.reasons.append(f"spam score {res.score:.2f}")
        v.refusal = (550, "5.7.1", "Message rejected as spam")
    elif ours == "tempfail" and v.refusal is None:
        v.reasons.append(f"spam score {res.score:.2f} ({res.action})")
        v.refusal = (451, "4.7.1", "Message deferred by the spam filter; try again later")
    elif ours == "junk":
        v.reasons.append(f"spam score {res.score:.2f}")
        v.junk = True
        if b"X-Spam: Yes\r\n" not in v.header:  # the DNSBL's may be there already
            v.header += b"X-Spam: Yes\r\n"
        v.header += spam_fields(res, action=b"X-Spam-Action: " not in v.header)
    return v


def spam_fields(res: SpamResult, action: bool = True) -> bytes:
    out = f"X-Spam-Score: {res.score:.2f} / {res.required:.2f}\r\n"
    if action:
        out += f"X-Spam-Action: {res.action}\r\n"
    return out.encode()

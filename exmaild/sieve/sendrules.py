"""Send rules (manual §5.3.8 发信规则): where the Sent copy of mail a member
submits through SMTP is stored, and with which flags.

When the member's `save_sent` setting is on (the default; clients that
APPEND their own copy turn it off), the script `exmail-send-rules`, if the
member has one, runs on the submitted message before it is stored: `keep`
(and implicit keep) is the Sent folder, `fileinto` another folder (the copy
goes there instead of Sent, or beside it with `:copy`), flags and keywords
go with the copy, always with \\Seen. `discard` means no Sent copy. Actions
that would send mail (redirect, reject, vacation) are not run for mail the
member sends. Anything that fails leaves the plain Sent copy, logged: the
send itself never depends on these rules.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from exmaild.mailstore.ingest import Target
from exmaild.sieve.errors import SieveError
from exmaild.sieve.interp import evaluate
from exmaild.sieve.message import MessageContext
from exmaild.sieve.rules import SEND_SCRIPT
from exmaild.store import flags as F

log = Logger(namespace="exmaild.sieve")
SENT = "\\Sent"


def plain(account_id: int) -> list[Target]:
    return [Target(account_id, SENT, F.SEEN, optional=True)]


async def sent_targets(app: Any, queue_id: str, account: Any, sender: str, data: Any, *,
                       head: bytes, start: int) -> list[Target]:
    """The Sent copy's targets for a submission by `account`."""
    if not app.cfg.sieve.enabled:
        return plain(account.id)
    from exmaild.sieve.delivery import limits_of, scripts_of, zone_of

    scripts = scripts_of(app)
    try:
        text = await scripts.get(account.id, SEND_SCRIPT)
        if text is None:
            return plain(account.id)
        ctx = MessageContext.from_bytes(data, envelope_from=sender, envelope_to="",
                                        head=head, start=start)
        result = evaluate(scripts.parsed(text), ctx, limits_of(app.cfg), zone=zone_of(app.cfg))
        out: list[Target] = []
        for a in result.effective:
            if a.kind not in ("keep", "fileinto"):
                if a.kind != "discard":
                    log.info("{queue_id}: send rule of <{who}>: {kind} is not run for sent "
                             "mail", queue_id=queue_id, who=account.address, kind=a.kind)
                continue
            box = SENT
            if a.kind == "fileinto" and a.target.upper() != "INBOX":
                if await app.store.mailboxes.get(account.id, a.target) is None:
                    log.warn("{queue_id}: send rule of <{who}>: no folder {folder!r}; the copy "
                             "goes to Sent", queue_id=queue_id, who=account.address,
                             folder=a.target)
                else:
                    box = a.target
            mask, keywords = F.from_names(list(a.flags))
            if all(t.mailbox != box for t in out):
                out.append(Target(account.id, box, mask | F.SEEN, keywords, optional=True))
        if not out:
            log.info("{queue_id}: send rule of <{who}> discarded the Sent copy",
                     queue_id=queue_id, who=account.address)
        return out
    except SieveError as e:
        log.warn("{queue_id}: send rules of <{who}> failed ({error}); the copy goes to Sent",
                 queue_id=queue_id, who=account.address, error=str(e))
    except Exception:
        log.failure("{queue_id}: send rules of <{who}>: engine fault; the copy goes to Sent",
                    queue_id=queue_id, who=account.address)
    return plain(account.id)

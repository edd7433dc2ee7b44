"""What runs after an IMAP COPY or MOVE is committed: small hooks side by
side (report spam to the member's lists, rspamd training), each awaited in
turn, a failure logged and never the command's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from exmaild.store.records import Account, Mailbox

log = Logger(namespace="exmaild.imap")

# hook(app, account, source mailbox, destination mailbox, UIDs in destination)
Hook = Callable[[Any, Account, Mailbox, Mailbox, list[int]], Awaitable[None]]


def _report_spam() -> Hook:
    from exmaild.sieve.reportspam import on_copy

    return on_copy


def _train_rspamd() -> Hook:
    from exmaild.spam import training

    async def train(app: Any, account: Account, src: Mailbox, dst: Mailbox,
                    uids: list[int]) -> None:
        training.after_copy(app, src, dst, uids)  # starts the upload, does not wait for it

    return train


HOOKS: list[Callable[[], Hook]] = [_report_spam, _train_rspamd]


async def after_copy(app: Any, account: Account | None, src: Mailbox, dst: Mailbox,
                     dst_uids: list[int]) -> None:
    if account is None:
        return
    for make in HOOKS:
        try:
            await make()(app, account, src, dst, dst_uids)
        except Exception:
            log.failure("after {mailbox}: a copy hook failed", mailbox=dst.name)

"""The welcome letter (manual §4.4.1.6): the default text, the enterprise's
template with placeholders, or none, put in each new member's INBOX through
the one ingest path (the daemon's, or the CLI process's own ingestor).

Placeholders: {name} {nickname} {address} {domain} {enterprise}. Anything
else in braces stays as written, so a template can never fail to render. A
first line `Subject: ...` in a template gives the letter's subject.
"""

from __future__ import annotations

import re
import secrets
from email.message import EmailMessage
from email.policy import SMTPUTF8
from email.utils import format_datetime, formataddr
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.directory.settings import enterprise_settings
from exmaild.store import model as m

log = Logger()

DEFAULT_SUBJECT = "Welcome to {enterprise}"
DEFAULT_TEXT = """Hello {name},

welcome to {enterprise}! Your mailbox {address} is ready.

Read and send mail with any IMAP, POP3 or SMTP client using your address and
password. Your administrator may have given you a first password that you
must change: do that at /api/v1/me/password before your mail client logs in.
"""

_PLACEHOLDER = re.compile(r"\{(name|nickname|address|domain|enterprise)\}")


def render(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda mt: values[mt.group(1)], text)


def compose(settings: dict[str, Any], values: dict[str, str], hostname: str) -> bytes | None:
    """The letter as bytes, or None when the enterprise turned it off."""
    mode = settings["welcome"]
    if mode == "off":
        return None
    subject, text = DEFAULT_SUBJECT, DEFAULT_TEXT
    if mode == "template" and settings["welcome_template"].strip():
        text = settings["welcome_template"]
        first, _, rest = text.partition("\n")
        if first.lower().startswith("subject:"):
            subject, text = first[8:].strip(), rest.lstrip("\r\n")
    msg = EmailMessage(policy=SMTPUTF8.clone(linesep="\r\n"))
    msg["From"] = formataddr((values["enterprise"], f"postmaster@{values['domain']}"))
    msg["To"] = formataddr((values["name"], values["address"]))
    msg["Subject"] = render(subject, values).replace("\r", " ").replace("\n", " ")
    msg["Date"] = format_datetime(_local_now())
    msg["Message-ID"] = f"<welcome.{secrets.token_hex(8)}@{hostname}>"
    msg.set_content(render(text, values).replace("\r\n", "\n"))
    return msg.as_bytes()


def _local_now() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


async def send_welcome(store: Any, ingestor: Any, addresses: list[str], hostname: str) -> int:
    """Put the letter in each of these new members' INBOX; how many got one.
    Best effort: the members exist already, so trouble is logged, not raised."""
    if ingestor is None or not addresses:
        return 0
    from exmaild.mailstore.ingest import IngestRequest, Target

    A, D, E = m.accounts.c, m.domains.c, m.enterprises.c

    def load(conn: sa.Connection) -> list[tuple[int, bytes | None]]:
        rows = conn.execute(sa.select(A.id, A.address, A.display_name, A.nickname, D.name,
                                      D.enterprise_id, E.name.label("ent"))
                            .join(m.domains, D.id == A.domain_id)
                            .join(m.enterprises, E.id == D.enterprise_id)
                            .where(A.address.in_(addresses)))
        settings: dict[int, dict[str, Any]] = {}
        out = []
        for r in rows:
            if r.enterprise_id not in settings:
                settings[r.enterprise_id] = enterprise_settings(conn, r.enterprise_id)
            values = {"name": r.display_name or r.address.partition("@")[0],
                      "nickname": r.nickname or "", "address": r.address, "domain": r.name,
                      "enterprise": r.ent}
            out.append((r.id, compose(settings[r.enterprise_id], values, hostname)))
        return out

    sent = 0
    try:
        letters = await store.pool.do(load)
        for account_id, raw in letters:
            if raw is None:
                continue
            res = await ingestor.ingest(IngestRequest(raw=raw, targets=[Target(account_id)]))
            sent += len(res.delivered)
    except Exception:
        log.failure("welcome letters could not all be delivered")
    return sent

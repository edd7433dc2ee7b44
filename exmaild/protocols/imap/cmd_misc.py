"""CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), ENABLE (RFC 5161), NAMESPACE
(RFC 2342), GETQUOTA / GETQUOTAROOT (RFC 2087)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from exmaild import __version__
from exmaild.netutil import is_loopback
from exmaild.store import imapmessages

from . import responses as r
from . import rev2
from .commands import Command, EnableArgs, IdArgs, MailboxArgs, QuotaArgs
from .encode import encode_astring, encode_mailbox, encode_nstring
from .namespace import NAMESPACE_LINE, get_mailbox
from .session import State

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")

# Advertised after login (Exmail's own server says IMAP4rev1 XLIST MOVE IDLE
# NAMESPACE CHILDREN ID UIDPLUS; the rest are standard extensions we serve).
AUTHENTICATED_CAPS = (
    "IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE",
    "CHILDREN",
    "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "XLIST", "LIST-EXTENDED", "LIST-STATUS",
    "QUOTA", "CONDSTORE", "ESEARCH",
    # issue 12 part A (docs/imap.md)
    "SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
    "WITHIN", "STATUS=SIZE", "CREATE-SPECIAL-USE", "OBJECTID", "SAVEDATE", "SEARCHRES",
    # issue 12, part B
    "QRESYNC", "MULTIAPPEND", "BINARY", "COMPRESS=DEFLATE", "UTF8=ACCEPT", "CATENATE",
    "NOTIFY",
)
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4REV2"})
QUOTA_ROOT = ""


def plaintext_ok(c: IMAPServer) -> bool:
    return c.tls or (bool(c.cfg.auth.allow_plaintext_loopback) and is_loopback(c.remote))


def capabilities(c: IMAPServer) -> list[str]:
    if c.session.state is not State.NOT_AUTHENTICATED:
        return [*AUTHENTICATED_CAPS, f"APPENDLIMIT={c.cfg.limits.message_size}"]
    caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
    if not c.tls:
        caps.append("STARTTLS")
    if plaintext_ok(c):
        caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
    else:
        caps.append("LOGINDISABLED")
    return caps


async def capability(c: IMAPServer, cmd: Command) -> r.Result:
    c.send(r.capability(capabilities(c)))
    return r.ok("Capability completed")


async def noop(c: IMAPServer, cmd: Command) -> r.Result:
    sel = c.session.selected
    if sel is not None:
        await sel.index.refresh()
    return r.ok(f"{cmd.name} completed")


async def logout(c: IMAPServer, cmd: Command) -> r.Result:
    c.end_reason = "logged out"
    c.send(r.bye("Logging out") + r.ok("Logout completed").line(cmd.tag))
    c.close()
    return r.SENT


SERVER_ID = (("name", "exmaild"), ("version", __version__), ("vendor", "exmaild"))


async def id_(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, IdArgs)
    if cmd.args.params:
        # Kept for the log only, so shorter than RFC 2971 allows (30 pairs of
        # 1,024 octets): a session holds a few KB of it at most.
        c.session.client_id = {k[:64]: (v[:256] if v else v) for k, v in cmd.args.params[:30]}
        log.info("imap client id: rip={rip}, user={user}, {params}", rip=c.remote,
                 user=c.session.user, params=c.session.client_id)
    items = b" ".join(encode_nstring(k) + b" " + encode_nstring(v) for k, v in SERVER_ID)
    c.send(b"* ID (" + items + b")\r\n")
    return r.ok("ID completed")


async def enable(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, EnableArgs)
    enabled = [cap for cap in cmd.args.capabilities if cap in ENABLEABLE]
    if "CONDSTORE" in enabled:
        c.session.condstore = True
    if "UTF8=ACCEPT" in enabled:
        c.session.utf8 = c.session.utf8_accept = True
    if "IMAP4REV2" in enabled:
        rev2.enable(c)
    if "QRESYNC" in enabled:  # RFC 7162 §3.2.3: implies CONDSTORE
        c.session.condstore = c.session.qresync = True
        if c.session.selected is not None:
            c.session.selected.view.qresync = True
    shown = ["IMAP4rev2" if cap == "IMAP4REV2" else cap for cap in enabled]
    c.send(r.untagged(" ".join(["ENABLED", *shown])))
    return r.ok("Enable completed")


async def namespace(c: IMAPServer, cmd: Command) -> r.Result:
    c.send(NAMESPACE_LINE)
    return r.ok("Namespace completed")


async def _quota_line(c: IMAPServer) -> bytes:
    aid = c.session.account_id
    used, quota = await c.store.pool.do(lambda conn: imapmessages.account_usage(conn, aid))
    resources = b"STORAGE %d %d" % ((used + 1023) // 1024, quota // 1024) if quota else b""
    return b"* QUOTA " + encode_astring(QUOTA_ROOT) + b" (" + resources + b")\r\n"


async def getquota(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, QuotaArgs)
    if cmd.args.root != QUOTA_ROOT:
        return r.no("No such quota root", "NONEXISTENT")
    c.send(await _quota_line(c))
    return r.ok("Getquota completed")


async def getquotaroot(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, MailboxArgs)
    box = await get_mailbox(c, cmd.args.mailbox)
    if box is None:
        return r.NONEXISTENT
    c.send(b"* QUOTAROOT " + encode_mailbox(cmd.args.mailbox, utf8=c.session.utf8) + b" "
           + encode_astring(QUOTA_ROOT) + b"\r\n" + await _quota_line(c))
    return r.ok("Getquotaroot completed")

"""Mailbox changes across processes and nodes through PostgreSQL LISTEN/NOTIFY.

Each daemon on PostgreSQL keeps two connections of its own beside the pool:
one LISTENs on the channel and hands what other processes announce to the
in-process ChangeNotifier (IDLE push, index invalidation), one sends this
process's changes with pg_notify. Both run on threads of their own, so the
reactor never waits on them. A lost listening connection is reopened with
back-off; after the gap every mailbox someone here watches is told to
re-read itself, since announcements made meanwhile are gone for good.

Directory changes (members, aliases, groups, policies: every change writes
an operation-log row) arrive on a second channel, raised by a trigger on
that table, and make the directory watch look at once instead of at its
next poll.

Queue kicks travel on a third, and make every other node's queue runner
scan at once instead of at its next `[queue] scan_interval`. `exmailctl
queue retry|flush` sends one inside its own transaction (`kick_queue`), so
it arrives once the rows are visible. A daemon announces mail it queued
only when its own runner has no room for it (`announce_queue`, sent after
the commit from the sender connection): a mail transaction never takes
PostgreSQL's notification lock, one lock shared by every transaction that
NOTIFYs, taken at commit and held to its end, so that it serialises their
commits.

Mailbox-change payloads are small JSON objects; `o` names the sending
process so it skips its own. UIDs that would not fit NOTIFY's 8000-octet
limit are left out: the receiver then diffs the mailbox against the
database instead. A queue kick carries its sender's origin (or nothing,
from exmailctl): the receiver just scans.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.store.changes import ChangeNotifier, MailboxChange, call_hooks

log = Logger(namespace="exmaild.pgnotify")

CHANNEL = "exmaild_changes"
# Raised by a trigger on operation_log (migration 0029): the directory changed.
DIRECTORY_CHANNEL = "exmaild_directory"
# Outbound mail is due now and the sender cannot take it (kick_queue, announce_queue).
QUEUE_CHANNEL = "exmaild_queue"
_QUEUE_KICK = object()  # in the outbox: send one queue kick
MAX_PAYLOAD = 7900
BACKOFF_MAX = 30.0


def conninfo(url: str) -> str:
    """A psycopg connection string from the SQLAlchemy URL."""
    u = sa.engine.make_url(url)
    parts = {"host": u.host, "port": u.port, "user": u.username, "password": u.password,
             "dbname": u.database, **{k: v for k, v in u.query.items() if isinstance(v, str)}}
    return " ".join(f"{k}='{str(v)}'".replace("\\", "\\\\") for k, v in parts.items()
                    if v is not None)


def kick_queue(conn: sa.Connection) -> None:
    """Wake every node's queue runner when this transaction commits (nothing
    if it rolls back). For rare transactions only (exmailctl's retry and
    flush): see the module's note on the lock. On SQLite there is no channel:
    the daemon finds the work at its next scan."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(QUEUE_CHANNEL, "")))


def encode(change: MailboxChange, origin: str) -> str:
    body = {"o": origin, "m": change.mailbox_id, "k": change.kind, "s": change.modseq,
            "u": list(change.uids)}
    text = json.dumps(body, separators=(",", ":"))
    if len(text) > MAX_PAYLOAD:
        body["u"] = []
        body["s"] = 0  # no hint for the receiver: it diffs instead
        text = json.dumps(body, separators=(",", ":"))
    return text


def decode(payload: str) -> tuple[str, MailboxChange]:
    d = json.loads(payload)
    return str(d["o"]), MailboxChange(int(d["m"]), str(d["k"]), tuple(int(u) for u in d["u"]),
                                      int(d["s"]))


class PgNotifyRelay:
    """Relays a ChangeNotifier's publications to and from other processes."""

    def __init__(self, url: str, notifier: ChangeNotifier, reactor: Any) -> None:
        self.conninfo = conninfo(url)
        self.notifier = notifier
        self.reactor = reactor
        self.origin = secrets.token_hex(8)
        self._outbox: queue.Queue[object] = queue.Queue(maxsize=100_000)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()  # the listening connection is up (tests)
        # Called (reactor thread) when another process changed the directory.
        self.directory_hooks: list[Callable[[], object]] = []
        # Called (reactor thread) when some process made outbound mail due now.
        self.queue_hooks: list[Callable[[], object]] = []

    def start(self) -> None:
        self.notifier.relay = self.send
        for target, name in ((self._listen_loop, "pgnotify-listen"),
                             (self._send_loop, "pgnotify-send")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.notifier.relay = None
        self._stopping.set()
        try:
            self._outbox.put_nowait(None)
        except queue.Full:
            pass
        for t in self._threads:
            t.join(5)
        self._threads.clear()

    # -- sending (reactor thread -> sender thread) --------------------------
    def send(self, change: MailboxChange) -> None:
        try:
            self._outbox.put_nowait(encode(change, self.origin))
        except queue.Full:  # the database is away; receivers re-read after their gap
            pass

    def announce_queue(self) -> None:
        """Tell the other nodes' queue runners to scan now (mail is due that
        this node cannot take); repeats waiting to be sent are one kick."""
        try:
            self._outbox.put_nowait(_QUEUE_KICK)
        except queue.Full:  # they scan on their own in a few seconds
            pass

    def _send_loop(self) -> None:
        import psycopg

        delay = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True,
                                     application_name="exmaild-notify-send") as conn:
                    delay = 0.5
                    while not self._stopping.is_set():
                        item = self._outbox.get()
                        if item is None:
                            return
                        batch: list[object] = [item]
                        while len(batch) < 500:
                            try:
                                more = self._outbox.get_nowait()
                            except queue.Empty:
                                break
                            if more is None:
                                self._stopping.set()
                                break
                            batch.append(more)
                        changes = [x for x in batch if isinstance(x, str)]
                        if changes:
                            conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                                         (CHANNEL, changes))
                        if len(changes) < len(batch):
                            conn.execute("SELECT pg_notify(%s, %s)",
                                         (QUEUE_CHANNEL, self.origin))
            except Exception as e:
                if self._stopping.is_set():
                    return
                log.warn("change notifications to other nodes failed ({error}); "
                         "reconnecting in {delay} s", error=str(e), delay=delay)
                self._stopping.wait(delay)
                delay = min(BACKOFF_MAX, delay * 2)

    # -- receiving (listener thread -> reactor thread) ----------------------
    def _listen_loop(self) -> None:
        import psycopg

        delay = 0.5
        first = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True,
                                     application_name="exmaild-notify-listen") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {DIRECTORY_CHANNEL}")
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self.connected.set()
                    if not first:
                        log.info("change notifications from other nodes: listening again")
                        self.reactor.callFromThread(self._catch_up)
                    first, delay = False, 0.5
                    while not self._stopping.is_set():
                        # Each one at once: the generator yields as they arrive and
                        # ends after a quiet second, when the stop flag is looked at.
                        for n in conn.notifies(timeout=1.0):
                            if n.channel == DIRECTORY_CHANNEL:
                                self.reactor.callFromThread(self._directory_changed)
                            elif n.channel == QUEUE_CHANNEL:
                                if n.payload != self.origin:
                                    self.reactor.callFromThread(self._queue_due)
                            else:
                                self.reactor.callFromThread(self._deliver, [n.payload])
            except Exception as e:
                self.connected.clear()
                if self._stopping.is_set():
                    return
                first = False
                log.warn("change notifications from other nodes lost ({error}); "
                         "reconnecting in {delay} s", error=str(e), delay=delay)
                self._stopping.wait(delay)
                delay = min(BACKOFF_MAX, delay * 2)

    def _deliver(self, payloads: list[str]) -> None:
        for p in payloads:
            try:
                origin, change = decode(p)
            except (ValueError, KeyError, TypeError):
                log.warn("ignoring a malformed change notification: {payload!r}",
                         payload=p[:200])
                continue
            if origin != self.origin:
                self.notifier.publish_local(change)

    def _directory_changed(self) -> None:
        call_hooks(self.directory_hooks, "directory change")

    def _queue_due(self) -> None:
        call_hooks(self.queue_hooks, "queue kick")

    def _catch_up(self) -> None:
        """After a gap: every watched mailbox re-reads itself from the database,
        the directory caches are checked and the queue runner scans."""
        self._directory_changed()
        self._queue_due()
        for mid in self.notifier.watched():
            self.notifier.publish_local(MailboxChange(mid, "exists", (), 0))


"""IMAP server units: body sections, folder names and patterns, the shared
mailbox index and a session's view of it (no sockets)."""

from __future__ import annotations

import pytest
import pytest_twisted

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.protocols.imap import fetch_sections as fs
from exmaild.protocols.imap import folders
from exmaild.protocols.imap.fetch import FetchItem, Section
from exmaild.protocols.imap.fetch_stream import ChunkProducer, make_plan
from exmaild.protocols.imap.session import View
from exmaild.store import flags as fl
from exmaild.store import imapmessages
from exmaild.store.changes import MailboxChange
from exmaild.store.connector import Store
from exmaild.store.imapcache import index_cache

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import mail

NESTED = (
    b"Subject: outer\r\n"
    b'Content-Type: multipart/mixed; boundary="a"\r\n'
    b"\r\n"
    b"--a\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"part one\r\n"
    b"--a\r\n"
    b'Content-Type: multipart/alternative; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"alt plain\r\n"
    b"--b\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>alt html</p>\r\n"
    b"--b--\r\n"
    b"--a\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b'Content-Type: multipart/mixed; boundary="c"\r\n'
    b"\r\n"
    b"--c\r\n"
    b"\r\n"
    b"inner one\r\n"
    b"--c\r\n"
    b"Content-Type: text/x-two\r\n"
    b"\r\n"
    b"inner two\r\n"
    b"--c--\r\n"
    b"--a--\r\n"
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", b"part one"),
        ("2.1", b"alt plain"),
        ("2.2", b"<p>alt html</p>"),
        ("2.2.MIME", b"Content-Type: text/html\r\n\r\n"),
        ("3.HEADER", b'Subject: inner\r\nContent-Type: multipart/mixed; boundary="c"\r\n\r\n'),
        ("3.1", b"inner one"),
        ("3.2", b"inner two"),
        ("3.2.MIME", b"Content-Type: text/x-two\r\n\r\n"),
        ("3.HEADER.FIELDS (subject)", b"Subject: inner\r\n\r\n"),
        ("1.HEADER", b""),  # not a message/rfc822 part
        ("4", None),
        ("1.1", None),
        ("3.3", None),
    ],
)
def test_section_bytes(spec: str, expected: bytes | None) -> None:
    from exmaild.protocols.imap.parser import parse_bytes

    cmd = parse_bytes(f"a FETCH 1 BODY[{spec}]".encode())
    section = cmd.args.items[0].section  # type: ignore[union-attr]
    assert fs.section_bytes(NESTED, section) == expected


def test_single_part_message_sections() -> None:
    raw = b"Subject: x\r\nX-Long: a\r\n  folded\r\n\r\nbody\r\n"
    assert fs.section_bytes(raw, Section((1,), "")) == b"body\r\n"
    assert fs.section_bytes(raw, Section((1,), "MIME")) == \
        b"Subject: x\r\nX-Long: a\r\n  folded\r\n\r\n"
    assert fs.section_bytes(raw, Section((), "HEADER.FIELDS", ("X-LONG",))) == \
        b"X-Long: a\r\n  folded\r\n\r\n"
    assert fs.section_bytes(raw, Section((), "HEADER.FIELDS.NOT", ("X-LONG",))) == \
        b"Subject: x\r\n\r\n"
    assert fs.section_bytes(b"no header end", Section((), "HEADER.FIELDS", ("A",))) == b"\r\n"


def test_whole_ranges_and_partials() -> None:
    item = FetchItem("BODY", Section(), True, (10, 5))
    assert fs.whole_range(item, 40, 100) == fs.Range(10, 15)
    item = FetchItem("BODY", Section((), "TEXT"), True, (50, 100))
    assert fs.whole_range(item, 40, 100) == fs.Range(90, 100)
    assert fs.whole_range(FetchItem("RFC822.HEADER"), 40, 100) == fs.Range(0, 40)
    assert fs.whole_range(FetchItem("BODY", Section(), True, (200, 5)), 40, 100) == \
        fs.Range(100, 100)
    plan = make_plan([FetchItem("FLAGS")], uid=True, modseq=True)
    assert [i.name for i in plan.items] == ["UID", "FLAGS", "MODSEQ"]
    assert plan.names[1] == b"FLAGS" and not plan.needs_rows


def test_folder_aliases_depth_and_matching() -> None:
    assert folders.canonical("已发送") == "Sent"
    assert folders.canonical("sent items/2024") == "Sent/2024"
    assert folders.canonical("Junk E-mail") == "Junk"
    assert folders.canonical("垃圾箱") == "Junk"
    assert folders.canonical("Projects") == "Projects"
    assert folders.check_new_name("/".join("x" * 10)) is None
    assert folders.check_new_name("/".join("x" * 11)) is not None
    assert folders.check_new_name("a//b") is not None
    assert folders.check_new_name("a*") is not None
    m = folders.matcher("", "%")
    assert m("INBOX") and m("Sent") and not m("Sent/x")
    m = folders.matcher("Sent/", "%")
    assert m("Sent/x") and not m("Sent") and not m("Sent/x/y")
    assert folders.matcher("", "*")("a/b/c")
    assert folders.matcher("", "inbox")("INBOX")
    assert not folders.matcher("", "inbox")("Inbox2")
    assert folders.children_index(["a/b/c", "x"]) == {"a", "a/b"}


# -- the shared index ------------------------------------------------------------------------
async def _setup(store: Store, n: int) -> tuple[int, int]:
    await store.directory.add_domain("example.test")
    acct = await store.directory.add_account("u@example.test", None)
    box = await store.mailboxes.get(acct.id, "INBOX")
    assert box is not None
    for i in range(n):
        await store.ingestor.ingest(IngestRequest(mail(f"m{i}"), [Target(acct.id, box.id)]))
    return acct.id, box.id


@pytest_twisted.ensureDeferred
async def test_index_follows_changes_with_and_without_notifications(store: Store) -> None:
    aid, mid = await _setup(store, 5)
    cache = index_cache(store)
    idx = cache.acquire(mid)
    await idx.refresh()
    assert list(idx.uids) == [1, 2, 3, 4, 5]
    # Another session claimed \Recent for these already.
    await store.pool.transaction(lambda c: imapmessages.claim_recent(c, mid, 5))
    view = View(idx)
    # A flag change nobody published (another node, say): found by the modseq scan.
    res = await store.pool.transaction(lambda c: imapmessages.store_flags(
        c, mid, [2], imapmessages.ADD, fl.FLAGGED))
    await idx.refresh()
    assert idx.flags[1] == fl.FLAGGED and idx.state.highestmodseq == res.modseq
    assert view.sync(allow_expunge=True, condstore=False) == [
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n"]
    # An expunge nobody published: the row count disagrees, so the index reloads.
    await store.pool.transaction(lambda c: imapmessages.store_flags(
        c, mid, [3], imapmessages.ADD, fl.DELETED))
    await store.pool.transaction(lambda c: imapmessages.expunge_deleted(c, mid, None))
    await idx.refresh()
    assert list(idx.uids) == [1, 2, 4, 5]
    out = view.sync(allow_expunge=False, condstore=False)
    assert out == [] and len(view) == 5  # held back: not allowed now
    assert view.sync(allow_expunge=True, condstore=True) == [b"* 3 EXPUNGE\r\n"]
    # Published changes: only the changed UIDs are read.
    res = await store.pool.transaction(lambda c: imapmessages.store_flags(
        c, mid, [4], imapmessages.ADD, fl.SEEN))
    store.notifier.publish(MailboxChange(mid, "flags", (4,), res.modseq))
    await store.ingestor.ingest(IngestRequest(mail("new"), [Target(aid, mid)]))
    await idx.refresh()
    assert list(idx.uids) == [1, 2, 4, 5, 6]
    top = view.claim_wanted()  # what SELECT and every sync do first
    assert top == 6
    mark = await store.pool.transaction(lambda c: imapmessages.claim_recent(c, mid, top))
    view.claimed(mark, top)
    out = view.sync(allow_expunge=True, condstore=True)
    assert out[0] == b"* 5 EXISTS\r\n" and out[1] == b"* 1 RECENT\r\n"
    assert out[2].startswith(b"* 3 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (")
    cache.release(idx)
    assert cache.peek(mid) is idx  # kept for a while after the last session


@pytest_twisted.ensureDeferred
async def test_index_marks_a_deleted_mailbox_gone(store: Store) -> None:
    _, mid = await _setup(store, 1)
    idx = index_cache(store).acquire(mid)
    await idx.refresh()
    store.notifier.publish(MailboxChange(mid, "deleted", (), 0))
    assert idx.gone
    index_cache(store).release(idx)
    assert index_cache(store).peek(mid) is None


@pytest_twisted.ensureDeferred
async def test_index_refreshes_asked_for_at_once_all_finish(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Issues 12/17: hundreds of sessions selecting one mailbox at once. They
    # used to take turns on a DeferredLock whose every hand-over ran inside the
    # previous one; past the recursion limit the holder died holding the lock
    # and every later SELECT of the mailbox waited forever.
    from twisted.internet import defer, reactor

    aid, mid = await _setup(store, 2)
    idx = index_cache(store).acquire(mid)
    runs = []
    real = idx._refresh_once

    async def counted() -> None:
        runs.append(len(idx.uids))
        await real()

    monkeypatch.setattr(idx, "_refresh_once", counted)
    first = defer.Deferred.fromCoroutine(idx.refresh())  # reads now
    # Asked while the first runs: they share one refresh that starts after it.
    crowd = [defer.Deferred.fromCoroutine(idx.refresh()) for _ in range(3000)]
    await defer.gatherResults([first, *crowd]).addTimeout(60, reactor)
    assert runs == [0, 2]
    await store.ingestor.ingest(IngestRequest(mail("late"), [Target(aid, mid)]))
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(idx.refresh()) for _ in range(3)]).addTimeout(60, reactor)
    assert list(idx.uids) == [1, 2, 3] and runs == [0, 2, 2, 3]
    index_cache(store).release(idx)


class _Transport:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.producer = None

    def registerProducer(self, producer, streaming):  # type: ignore[no-untyped-def]
        self.producer = producer
        producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data.append(data)


def test_chunk_producer_writes_in_order_and_finishes() -> None:
    from twisted.internet import defer

    pending: list[defer.Deferred[bytes]] = []
    chunks = iter([b"one", b"", "async", b"three"])

    def next_chunk():  # type: ignore[no-untyped-def]
        item = next(chunks, None)
        if item == "async":
            d: defer.Deferred[bytes] = defer.Deferred()
            pending.append(d)
            return d
        return item

    t = _Transport()
    done = ChunkProducer(t, next_chunk).start()
    assert t.data == [b"one"]
    t.producer.resumeProducing()  # type: ignore[attr-defined]
    assert not done.called and pending
    pending[0].callback(b"two")
    assert t.data == [b"one", b"two"]
    t.producer.resumeProducing()  # type: ignore[attr-defined]
    assert t.data == [b"one", b"two", b"three"]
    t.producer.resumeProducing()  # type: ignore[attr-defined]
    assert done.called and t.producer is None


@pytest_twisted.ensureDeferred
async def test_cached_fetch_rows_stay_within_budget(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from exmaild.store import imapcache

    _, mid = await _setup(store, 4)
    cache = index_cache(store)
    idx = cache.acquire(mid)
    await idx.refresh()
    row = (1, 10, "seg", 0, 100, b"e" * 1000, b"b" * 1000, b"x")
    monkeypatch.setattr(imapcache, "ROW_CACHE_BYTES", 5000)
    idx.add_rows({1: row, 2: row})
    assert set(idx.rows) == {1, 2} and cache.row_bytes == idx.rows_bytes
    idx.add_rows({3: row, 4: row, 99: row})  # 99 is not in the mailbox
    assert len(idx.rows) <= 2 and cache.row_bytes <= 5000 and 99 not in idx.rows
    store.notifier.publish(MailboxChange(mid, "expunge", tuple(idx.rows), idx.state.highestmodseq))
    assert idx.rows == {} and cache.row_bytes == 0
    cache.release(idx)

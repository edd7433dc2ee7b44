"""SEARCH BODY/TEXT over the whole decoded text (content_text and its index),
at store level on SQLite and PostgreSQL, and through imaplib against the
real daemon. Every needle here lies past the old 16,384-character excerpt or
inside a text attachment, where the old search never looked."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import imaplib
import itertools
import logging
import quopri
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa

from exmaild.config import DatabaseConfig, PathsConfig, load_config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.reindex import reindex
from exmaild.mailstore.searchtext import message_text
from exmaild.mailstore.service import MailStore as Store
from exmaild.searchquery import SearchNot, SearchText
from exmaild.store import model as m
from exmaild.store import search as search_module
from exmaild.store import textindex
from exmaild.store.directory import DirectoryError
from exmaild.store.search import build_query, search_uids

from .conftest import *  # noqa: F403 (fixtures)
from .daemon import Daemon, exmailctl, write_config

_accounts = itertools.count(1)
DEEP = 21_600  # where the old excerpt (16,384 characters) never reached
HEAD = "From: a@example.test\r\nTo: b@example.test\r\nSubject: {s}\r\nMIME-Version: 1.0\r\n"


def filler(n: int, unit: str = "lorem ipsum dolor ") -> str:
    return (unit * (n // len(unit) + 1))[:n]


def deep_plain(word: str, at: int = DEEP, subject: str = "long") -> bytes:
    """A text/plain message whose decoded text has ``word`` at character ``at``."""
    body = filler(at) + word + " tail"
    return (HEAD.format(s=subject) + "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            + body + "\r\n").encode()


def with_text_attachment(word: str, csv_word: str = "csvcell") -> bytes:
    """A long body (the old excerpt ends inside it), then a base64 text/plain
    attachment holding ``word`` and a text/csv one holding ``csv_word``."""
    notes = f"meeting notes\nthe code word is {word}\n".encode()
    b64 = base64.encodebytes(notes).decode().replace("\n", "\r\n")
    return (
        HEAD.format(s="attached") + "Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee the attachment "
        + filler(17_000) + "\r\n"
        "--B\r\nContent-Type: text/plain; name=notes.txt\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=notes.txt\r\n\r\n" + b64 +
        "--B\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=t.csv\r\n"
        f"\r\nname,value\r\n{csv_word},1\r\n--B--\r\n"
    ).encode()


def chinese(charset: str, cte: str, tail: str = "第三季度报告已提交") -> bytes:
    text = filler(17_000, "会议将在三楼会议室举行，") + tail + "。"
    data = text.encode(charset)
    if cte == "base64":
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif cte == "quoted-printable":
        body = quopri.encodestring(data).replace(b"\n", b"\r\n")
    else:
        body = data
    head = HEAD.format(s="zh") + (
        f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n")
    return head.encode() + body


class Box:
    def __init__(self, store: Store, account_id: int, mailbox_id: int) -> None:
        self.store, self.account_id, self.id = store, account_id, mailbox_id

    @classmethod
    async def new(cls, store: Store) -> Box:
        if await store.directory.get_domain("example.test") is None:
            with contextlib.suppress(DirectoryError):
                await store.directory.add_domain("example.test")
        acct = await store.directory.add_account(f"t{next(_accounts)}@example.test", None)
        inbox = await store.mailboxes.get(acct.id, "INBOX")
        assert inbox is not None
        return cls(store, acct.id, inbox.id)

    async def add(self, *raws: bytes) -> list[int]:
        out = []
        for raw in raws:
            res = await self.store.ingestor.ingest(IngestRequest(raw, [Target(self.account_id)]))
            out.append(res.delivered[0].uid)
        return out

    async def search(self, key: Any) -> list[int]:
        view = [e.uid for e in await self.store.mailboxes.messages([self.id])]
        return (await search_uids(self.store, self.id, key, view_uids=view)).uids


@pytest.fixture(params=["scan", "index"])
def text_path(request: pytest.FixtureRequest) -> Any:
    """Both ways a text key is answered: scanning the text (small views) and,
    on SQLite, the FTS5 trigram index (large views; forced here)."""
    saved = search_module._SCAN_MAX
    search_module._SCAN_MAX = 0 if request.param == "index" else 10**9
    yield request.param
    search_module._SCAN_MAX = saved


@pytest_twisted.ensureDeferred
async def test_word_deep_in_the_body(store: Store, text_path: str) -> None:
    box = await Box.new(store)
    hit, other, near = await box.add(
        deep_plain("zebracorn"), deep_plain("nothing", subject="x"), deep_plain("zebracorn", 100)
    )
    assert await box.search(SearchText("BODY", "zebracorn")) == [hit, near]
    assert await box.search(SearchText("TEXT", "ZebraCorn")) == [hit, near]
    assert await box.search(SearchText("BODY", "dolor zebracorn tail")) == [hit]
    assert await box.search(SearchNot(SearchText("BODY", "zebracorn"))) == [other]
    assert await box.search(SearchText("BODY", "zebracorns")) == []


@pytest_twisted.ensureDeferred
async def test_word_in_a_base64_text_attachment(store: Store, text_path: str) -> None:
    box = await Box.new(store)
    att, plain = await box.add(with_text_attachment("quokkafile"), deep_plain("x", 10))
    assert await box.search(SearchText("BODY", "QuokkaFile")) == [att]
    assert await box.search(SearchText("TEXT", "code word is quokka")) == [att]
    assert await box.search(SearchText("BODY", "see the attachment")) == [att]
    assert await box.search(SearchText("TEXT", "notes.txt")) == [att]  # its name too
    assert await box.search(SearchText("BODY", "CSVCELL,1")) == [att]  # text/csv
    assert await box.search(SearchNot(SearchText("BODY", "quokkafile"))) == [plain]


@pytest_twisted.ensureDeferred
async def test_chinese_substrings_and_short_terms(store: Store, text_path: str) -> None:
    box = await Box.new(store)
    gb, utf8, qp, other = await box.add(
        chinese("gb2312", "base64"), chinese("utf-8", "8bit"),
        chinese("utf-8", "quoted-printable"), chinese("utf-8", "8bit", tail="年终总结"),
    )
    assert await box.search(SearchText("BODY", "季度报")) == [gb, utf8, qp]
    assert await box.search(SearchText("TEXT", "三季度报告已")) == [gb, utf8, qp]
    assert await box.search(SearchText("BODY", "报告")) == [gb, utf8, qp]  # 2 characters
    assert await box.search(SearchText("BODY", "总")) == [other]  # 1 character
    # Two ASCII characters past the excerpt, any case.
    deep, shallow = await box.add(deep_plain("QZ!"), deep_plain("none", 50))
    assert await box.search(SearchText("BODY", "qz")) == [deep]
    assert await box.search(SearchText("TEXT", "Qz")) == [deep]
    assert await box.search(SearchNot(SearchText("BODY", "qZ"))) == [gb, utf8, qp, other, shallow]


def test_encoded_chinese_is_decoded() -> None:
    for charset, cte in (("utf-8", "quoted-printable"), ("gb2312", "base64")):
        raw = chinese(charset, cte)
        assert "季度报告".encode(charset) not in raw  # encoded, not literal
        assert "第三季度报告已提交" in message_text(raw, 1 << 20)


@pytest_twisted.ensureDeferred
async def test_text_is_stored_once_and_removed_with_its_content(store: Store) -> None:
    a, b = await Box.new(store), await Box.new(store)
    raw = deep_plain("wombatine")
    res = await store.ingestor.ingest(
        IngestRequest(raw, [Target(a.account_id), Target(b.account_id)]))
    await b.add(raw)  # the same bytes again: the same content
    counts = await store.pool.do(lambda c: c.execute(
        sa.select(sa.func.count()).select_from(m.content_text)
        .where(m.content_text.c.content_id == res.content_id)).scalar_one())
    assert counts == 1
    excerpt = await store.pool.do(lambda c: c.execute(
        sa.select(m.contents.c.excerpt).where(m.contents.c.id == res.content_id)).scalar_one())
    assert excerpt == ""  # the whole text is in content_text instead
    for box in (a, b):
        entries = await store.mailboxes.messages([box.id])
        await store.mailboxes.expunge_ids([e.id for e in entries])

    def left(conn: sa.Connection) -> tuple[int, int]:
        rows = conn.execute(sa.select(sa.func.count()).select_from(m.content_text)).scalar_one()
        fts = -1
        if conn.dialect.name == "sqlite":
            fts = conn.exec_driver_sql(
                f"SELECT count(*) FROM {textindex.FTS_TABLE} WHERE {textindex.FTS_TABLE} "
                "MATCH '\"wombatine\"'").scalar_one()
        return rows, fts

    rows, fts = await store.pool.do(left)
    assert rows == 0 and fts in (0, -1)


@pytest_twisted.ensureDeferred
async def test_the_index_exists_and_is_used(store: Store) -> None:
    def probe(conn: sa.Connection) -> bool:
        if conn.dialect.name == "sqlite":
            return textindex.has_fts(conn)
        return conn.exec_driver_sql(
            "SELECT 1 FROM pg_indexes WHERE indexname = %s", (textindex.PG_INDEX,)
        ).first() is not None

    assert await store.pool.do(probe)
    if store.pool.is_sqlite:
        query, _ = build_query("sqlite", 1, SearchText("BODY", "季度报告"), list(range(1, 400)),
                               fts=True)
        assert textindex.FTS_TABLE in str(query)
        query, _ = build_query("sqlite", 1, SearchText("BODY", "报告"), list(range(1, 400)),
                               fts=True)
        assert textindex.FTS_TABLE not in str(query)  # 2 characters: no trigram


@pytest_twisted.ensureDeferred
async def test_reindex_fills_mail_stored_without_text(store: Store, text_path: str) -> None:
    box = await Box.new(store)
    store.ingestor.text_chars = 0  # as stored before content_text existed
    try:
        old, att = await box.add(deep_plain("narwhalish"), with_text_attachment("narwhalish"))
    finally:
        store.ingestor.text_chars = 1 << 20
    near = (await box.add(deep_plain("narwhalish", 50)))[0]
    # Until reindexed, the excerpt answers (as before): only the shallow word.
    assert await box.search(SearchText("BODY", "narwhalish")) == [near]
    assert await box.search(SearchText("BODY", "lorem")) == [old, att, near]
    stats = await reindex(store, limit=1 << 20, batch=1)
    assert stats.indexed == 2 and stats.unreadable == 0
    assert await box.search(SearchText("BODY", "narwhalish")) == [old, att, near]
    assert (await reindex(store, limit=1 << 20)).indexed == 0  # nothing left to do
    stats = await reindex(store, limit=30, rebuild=True)  # a smaller cap, everything again
    assert stats.indexed == 3
    assert await box.search(SearchText("BODY", "narwhalish")) == []
    assert await box.search(SearchText("BODY", "see the attachment")) == [att]


def test_text_cap_and_alternatives() -> None:
    alt = (HEAD.format(s="alt") + "Content-Type: multipart/alternative; boundary=A\r\n\r\n"
           "--A\r\nContent-Type: text/plain\r\n\r\nHello   dear\r\nworld\r\n"
           "--A\r\nContent-Type: text/html\r\n\r\n<p>Hello dear <b>world</b></p>\r\n"
           "--A\r\nContent-Type: text/html\r\n\r\n<p>Only in &amp; HTML</p>\r\n--A--\r\n").encode()
    assert message_text(alt, 1000) == "Hello   dear\nworld\nOnly in & HTML"
    assert message_text(deep_plain("end"), 100) == filler(100)
    assert message_text(deep_plain("end"), 0) == ""


# -- through the real daemon --------------------------------------------------


def _imap(ports: dict[str, int]) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", ports["imap"])
    c.login("bob@example.test", "Correct-Horse-9")
    c.select("INBOX")
    return c


def _search(c: imaplib.IMAP4, *criteria: str, literal: str | None = None) -> list[int]:
    if literal is not None:
        c.literal = literal.encode()
    typ, data = c.uid("SEARCH", *criteria)
    assert typ == "OK", data
    return [int(x) for x in data[0].split()]


def test_daemon_searches_the_whole_text(cfg: Any, tmp_path: Path) -> None:
    # SQLite, or PostgreSQL when configured (the cfg fixture's database).
    config, ports = write_config(tmp_path, db_url=cfg.database.url, search={"max_text_chars": 0})
    for args in (("domain", "add", "example.test"),
                 ("user", "add", "bob@example.test", "--password", "Correct-Horse-9")):
        assert exmailctl(config, *args).returncode == 0
    daemon = Daemon(config, ports, tmp_path)
    daemon.start(wait=60)
    try:  # first mail stored without the whole text, as before this feature
        c = _imap(ports)
        assert c.append("INBOX", None, None, deep_plain("legacyword"))[0] == "OK"
        c.logout()
    finally:
        daemon.stop()
    config.write_text(config.read_text().replace("max_text_chars = 0", "max_text_chars = 1048576"))
    daemon.start(wait=60)
    try:
        c = _imap(ports)
        for raw in (deep_plain("zebracorn"), with_text_attachment("quokkafile"),
                    chinese("gb2312", "base64"), deep_plain("QZ!"), deep_plain("plain", 20)):
            assert c.append("INBOX", None, None, raw)[0] == "OK"
        legacy, deep, att, zh, two, plain = _search(c, "ALL")
        assert _search(c, "BODY", "zebracorn") == [deep]
        assert _search(c, "TEXT", "ZEBRACORN") == [deep]
        assert _search(c, "BODY", "quokkafile") == [att]
        assert _search(c, "CHARSET", "UTF-8", "BODY", literal="季度报") == [zh]
        assert _search(c, "CHARSET", "UTF-8", "TEXT", literal="报告") == [zh]
        assert _search(c, "BODY", "qz") == [two]
        assert _search(c, "NOT", "BODY", "qz") == [legacy, deep, att, zh, plain]
        # Stored before the index: not found past the excerpt until reindexed.
        assert _search(c, "BODY", "legacyword") == []
        done = exmailctl(config, "search", "reindex")  # beside the running daemon
        assert done.returncode == 0, done.stderr
        assert "1 message(s) indexed" in done.stdout
        assert _search(c, "BODY", "legacyword") == [legacy]
        c.logout()
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_postgresql_without_pg_trgm_falls_back_to_scanning(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that may not create the extension: the upgrade logs it and goes
    on without the index; SEARCH scans and finds the same messages."""
    from twisted.internet import reactor

    suffix = uuid.uuid4().hex[:8]
    role, dbname = f"exm_noext_{suffix}", f"exm_noext_db_{suffix}"
    admin = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        c.exec_driver_sql(f'CREATE DATABASE "{dbname}"')
        c.exec_driver_sql(f'REVOKE CREATE ON DATABASE "{dbname}" FROM PUBLIC')
    db_admin_url = sa.engine.make_url(pg_database).set(database=dbname)
    db_admin = sa.create_engine(db_admin_url, isolation_level="AUTOCOMMIT")
    with db_admin.connect() as c:
        c.exec_driver_sql(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    db_admin.dispose()
    url = db_admin_url.set(username=role).render_as_string(hide_password=False)
    base = load_config(None)
    cfg = dataclasses.replace(base, paths=PathsConfig(data=str(tmp_path / "var")),
                              database=DatabaseConfig(url=url, pool_size=2))
    store = Store(cfg, reactor)
    try:
        with caplog.at_level(logging.WARNING, logger="alembic.runtime.migration"):
            store.open()
        assert "pg_trgm unavailable" in caplog.text
        store.startService()
        try:
            index = await store.pool.do(lambda c: c.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'content_text'").all())
            assert textindex.PG_INDEX not in {r[0] for r in index}
            box = await Box.new(store)
            hit, _ = await box.add(deep_plain("zebracorn"), deep_plain("other"))
            saved = search_module._SCAN_MAX
            search_module._SCAN_MAX = 0  # the path a large mailbox takes
            try:
                assert await box.search(SearchText("BODY", "zebracorn")) == [hit]
            finally:
                search_module._SCAN_MAX = saved
            stats = await reindex(store, limit=1 << 20)
            assert stats.index.startswith("none (pg_trgm unavailable")
        finally:
            store.stopService()
    finally:
        store.engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            c.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_the_store_does_not_import_a_protocol() -> None:
    """The search key tree and sequence sets live in exmaild/searchquery.py;
    store/ compiles them without importing exmaild.protocols (layers point down)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "exmaild"
    offenders = []
    for path in [*(root / "store").glob("*.py"), root / "searchquery.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("exmaild.protocols")]
    assert offenders == []

"""UIDVALIDITY never repeats within an account (RFC 3501 §2.3.1.1), and
mailbox ids are never reused: through imaplib against an in-process listener
on a real loopback socket, on SQLite and PostgreSQL."""

from __future__ import annotations

import imaplib
import re
import threading

import pytest_twisted

from exmaild.store import imapfolders

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import PASSWORD, USER, Server, blocking, imap_server_fixture  # noqa: F401


def _login(srv: Server) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", srv.port, timeout=20)
    c.login(USER, PASSWORD)
    return c


def _uidvalidity(c: imaplib.IMAP4, name: str) -> int:
    typ, data = c.status(name, "(UIDVALIDITY)")
    assert typ == "OK", data
    m = re.search(rb"UIDVALIDITY (\d+)", data[0])
    assert m, data
    return int(m.group(1))


@pytest_twisted.ensureDeferred
async def test_delete_create_rename_never_repeat_uidvalidity(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> list[int]:
        c = _login(imap_server)
        seen = [_uidvalidity(c, n) for n in ("INBOX", "Sent", "Drafts", "Trash", "Junk")]
        # Far quicker than a second per round: the clock alone cannot tell them apart.
        for _ in range(10):
            assert c.create("Work")[0] == "OK"
            seen.append(_uidvalidity(c, "Work"))
            assert c.delete("Work")[0] == "OK"
        # A rename gives a new UIDVALIDITY; renaming back must not revive the old one.
        assert c.create("A/B")[0] == "OK"
        seen += [_uidvalidity(c, "A"), _uidvalidity(c, "A/B")]
        for _ in range(3):
            assert c.rename("A", "C")[0] == "OK"
            seen += [_uidvalidity(c, "C"), _uidvalidity(c, "C/B")]
            assert c.rename("C", "A")[0] == "OK"
            seen += [_uidvalidity(c, "A"), _uidvalidity(c, "A/B")]
        # SELECT reports the same value STATUS does.
        typ, _ = c.select("A/B")
        assert typ == "OK"
        assert int(c.untagged_responses["UIDVALIDITY"][-1]) == seen[-1]
        c.logout()
        return seen

    seen = await blocking(run)
    assert len(set(seen)) == len(seen), sorted(seen)
    assert all(0 < v < 2**32 for v in seen)


@pytest_twisted.ensureDeferred
async def test_concurrent_sessions_get_distinct_uidvalidity(imap_server: Server) -> None:
    """Several connections creating and deleting at once (on PostgreSQL these
    are concurrent transactions) never share a value."""
    await imap_server.account()
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            c = _login(imap_server)
            start.wait()
            got = []
            for i in range(5):
                name = f"W{k}-{i}"
                assert c.create(name)[0] == "OK"
                got.append(_uidvalidity(c, name))
                assert c.delete(name)[0] == "OK"
            results[k] = got
            c.logout()
        except BaseException as e:  # reported below, on the test's thread
            errors.append(e)

    def run() -> None:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    await blocking(run)
    assert not errors, errors
    values = [v for got in results.values() for v in got]
    assert len(values) == 20 and len(set(values)) == 20, sorted(values)


@pytest_twisted.ensureDeferred
async def test_mailbox_ids_are_not_reused(imap_server: Server) -> None:
    acct = await imap_server.account()
    store = imap_server.store
    first = await store.pool.transaction(lambda c: imapfolders.create(c, acct.id, "Tmp"))
    await store.pool.transaction(lambda c: imapfolders.delete(c, first.id))
    second = await store.pool.transaction(lambda c: imapfolders.create(c, acct.id, "Tmp"))
    assert second.id != first.id
    assert second.uidvalidity != first.uidvalidity


def test_upgrade_keeps_mail_and_seeds_the_counter(cfg) -> None:  # type: ignore[no-untyped-def]
    """Upgrading a database with mail in it: the SQLite table rebuild must not
    cascade to the messages, and the counter starts above the values in use."""
    import sqlalchemy as sa

    from exmaild.store import model as m
    from exmaild.store import schema
    from exmaild.store.pool import make_engine

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.database_url, 2)
    schema.upgrade(engine, "0002")
    with engine.begin() as c:
        c.execute(sa.insert(m.enterprises).values(id=1, name="e", created=0))
        c.execute(sa.insert(m.domains).values(id=1, enterprise_id=1, name="ex.test", created=0))
        c.execute(sa.insert(m.accounts).values(
            id=1, domain_id=1, address="a@ex.test", settings={}, created=0))
        c.execute(sa.insert(m.mailboxes), [
            {"id": 1, "account_id": 1, "name": "INBOX", "uidvalidity": 4000000000},
            {"id": 2, "account_id": 1, "name": "Old", "uidvalidity": 7},
        ])
        c.execute(sa.insert(m.contents).values(
            id=1, digest="d" * 64, segment="s", offset=0, size=1, refcount=1, header_len=0,
            subject="", from_addr="", to_addr="", cc_addr="", bcc_addr="", message_id="",
            attachment_names="", envelope=b"", bodystructure=b"", body=b"", headers_text="",
            excerpt=""))
        c.execute(sa.insert(m.messages).values(
            id=1, mailbox_id=2, uid=1, content_id=1, size=1, internal_date=0, added=0, modseq=1))
    schema.upgrade(engine)
    with engine.begin() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(m.messages)).scalar() == 1
        assert c.execute(sa.select(m.accounts.c.next_uidvalidity)).scalar() == 4000000001
        c.execute(m.mailboxes.delete().where(m.mailboxes.c.id == 2))  # cascades now
        assert c.execute(sa.select(sa.func.count()).select_from(m.messages)).scalar() == 0
        if engine.dialect.name == "sqlite":  # PostgreSQL's sequences never go back
            c.execute(m.mailboxes.delete().where(m.mailboxes.c.id == 1))
            new = c.execute(m.mailboxes.insert().values(
                account_id=1, name="New", uidvalidity=1)).inserted_primary_key[0]
            assert new == 3
    engine.dispose()

"""Exporting a recycled member's mail as a zip of mbox files (manual
§4.4.2.5), on the real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import mailbox
import zipfile
from pathlib import Path

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI
from exmaild.directory.errors import NotFound
from exmaild.directory.service import DirectoryService
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.ops.recyclezip import export_zip
from exmaild.store import flags, imapfolders
from exmaild.store.connector import Store

PW = "Secret123x"


def mail(n: int) -> bytes:
    return (f"From: a@remote.test\r\nSubject: note {n}\r\nMessage-ID: <n{n}@remote.test>\r\n"
            f"\r\nFrom the start of a line, number {n}\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_export_a_recycled_members_mail(store: Store, tmp_path: Path) -> None:
    d = DirectoryService(store, store.cfg.directory)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_member(CLI, "ann@acme.test", PW)
    aid = (await store.directory.get_account("ann@acme.test")).id
    await store.pool.transaction(lambda conn: imapfolders.create(conn, aid, "Projects/2026"))
    for n in range(3):
        await store.ingestor.ingest(IngestRequest(mail(n), [Target(aid, "INBOX")]))
    await store.ingestor.ingest(IngestRequest(mail(9), [Target(aid, "Projects/2026",
                                                               flags.SEEN)]))
    with pytest.raises(NotFound):  # only what is in the recycle bin
        await d.recycled_for_export(CLI, "ann@acme.test")
    await d.delete_member(CLI, "ann@acme.test")
    got_id, address = await d.recycled_for_export(CLI, "ann@acme.test")
    assert (got_id, address) == (aid, "ann@acme.test")
    dest = tmp_path / "ann.zip"
    st = await export_zip(store, aid, dest)
    assert st.messages == 4
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        assert names[0] == "INBOX.mbox" and "Projects/2026.mbox" in names
        zf.extractall(tmp_path / "x")
    inbox = mailbox.mbox(str(tmp_path / "x" / "INBOX.mbox"))
    assert [m["Subject"] for m in inbox] == ["note 0", "note 1", "note 2"]
    assert b"\n>From the start" in inbox.get_bytes(0)  # mboxrd: a body "From " is quoted
    proj = list(mailbox.mbox(str(tmp_path / "x" / "Projects" / "2026.mbox")))
    assert [m["Subject"] for m in proj] == ["note 9"] and proj[0]["Status"] == "RO"
    with pytest.raises(FileExistsError):
        await export_zip(store, aid, dest)  # never over an existing file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    log = await d.list_log(CLI, action="recycle.export")
    assert [e["target"] for e in log["items"]] == ["ann@acme.test"]


@pytest_twisted.ensureDeferred
async def test_reassign_a_recycled_members_mail(store: Store) -> None:
    from exmaild.directory.errors import Conflict

    d = DirectoryService(store, store.cfg.directory)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_member(CLI, "ann@acme.test", PW)
    await d.add_member(CLI, "bob@acme.test", PW, quota_bytes=100)
    aid = (await store.directory.get_account("ann@acme.test")).id
    bid = (await store.directory.get_account("bob@acme.test")).id
    await store.pool.transaction(lambda conn: imapfolders.create(conn, aid, "Projects"))
    for n, box in ((1, "INBOX"), (2, "INBOX"), (3, "Projects")):
        await store.ingestor.ingest(IngestRequest(mail(n), [Target(aid, box, flags.SEEN)]))
    await d.delete_member(CLI, "ann@acme.test")
    with pytest.raises(NotFound):
        await d.reassign_recycled(CLI, "bob@acme.test", "ann@acme.test")  # not recycled
    with pytest.raises(Conflict, match="no room"):  # bob's quota: nothing moves
        await d.reassign_recycled(CLI, "ann@acme.test", "bob@acme.test")
    assert not [b for b in await store.mailboxes.list(bid) if b.name.startswith("Recycled")]
    await d.update_member(CLI, "bob@acme.test", {"quota_bytes": 0})
    r = await d.reassign_recycled(CLI, "ann@acme.test", "bob@acme.test")
    assert r["messages"] == 3 and r["folder"] == "Recycled/ann@acme.test"
    boxes = {b.name: b for b in await store.mailboxes.list(bid)}
    inbox = await store.mailboxes.messages([boxes["Recycled/ann@acme.test/INBOX"].id])
    proj = await store.mailboxes.messages([boxes["Recycled/ann@acme.test/Projects"].id])
    assert len(inbox) == 2 and len(proj) == 1 and all(e.flags & flags.SEEN for e in inbox)
    bob = await d.get_member(CLI, "bob@acme.test")
    ann = await d.get_member(CLI, "ann@acme.test", deleted=True)
    assert bob["message_count"] == 3 and ann["message_count"] == 0 and ann["used_bytes"] == 0

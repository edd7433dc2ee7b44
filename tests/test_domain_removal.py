"""Removing a domain moves its accounts to the recycle bin (issue #10): on
the real store (SQLite, and PostgreSQL when configured), through the service
layer and exmailctl's command handlers in-process."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest
import pytest_twisted
import sqlalchemy as sa

from exmaild.directory.actor import CLI, Actor
from exmaild.directory.errors import Conflict, NotFound
from exmaild.directory.service import DirectoryService
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.store import model
from exmaild.store.connector import Store

PW = "Secret123x"


def svc(store: Store) -> DirectoryService:
    return DirectoryService(store, dataclasses.replace(store.cfg.directory, recycle_days=30))


async def cli(store: Store, *argv: str) -> tuple[int, str, str]:
    """exmailctl's parser and handlers on this store (the subprocess contract
    of `domain remove` is in tests/test_daemon.py)."""
    from exmaild.cli import _COMMANDS, CLIError, build_parser
    from exmaild.directory.errors import ServiceError

    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = await _COMMANDS[(args.group, args.cmd)](store, args)
    except (ServiceError, CLIError) as e:
        return 1, out.getvalue(), str(e)
    return rc, out.getvalue(), ""


@pytest_twisted.ensureDeferred
async def test_removed_domain_recycles_accounts_and_restores(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_enterprise(CLI, "Globex")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_domain(CLI, "old.test", "Acme")
    await d.add_domain(CLI, "globex.test", "Globex")
    await d.add_member(CLI, "ann@acme.test", PW)
    await d.add_member(CLI, "ola@old.test", PW)
    await d.add_member(CLI, "gone@old.test", PW)
    await d.add_alias(CLI, "ola@acme.test", "ola@old.test")  # alias kept in the other domain
    await d.add_alias(CLI, "ann.old@old.test", "ann@acme.test")  # alias in the removed one
    await d.add_shared(CLI, "desk@old.test", members=["ann@acme.test"])
    await d.add_group(CLI, "team@old.test", members=["ola@old.test"])
    await d.add_group(CLI, "all@acme.test", groups=["team@old.test"],
                      members=["ann@acme.test"])
    ola = await store.directory.get_account("ola@old.test")
    assert ola is not None
    await store.ingestor.ingest(IngestRequest(
        b"Subject: keep me\r\nMessage-ID: <k1@x>\r\n\r\nhi\r\n", [Target(ola.id, "INBOX")]))
    await d.delete_member(CLI, "gone@old.test")
    with store.engine.begin() as c:  # gone@ has been in the bin for 10 days
        c.execute(model.accounts.update().where(model.accounts.c.address == "gone@old.test")
                  .values(deleted_at=model.accounts.c.deleted_at - 10 * 86400))

    # Without confirmation nothing happens, through the CLI too.
    with pytest.raises(Conflict, match="2 account"):
        await d.remove_domain(CLI, "old.test", confirm=False, enterprise="Acme")
    rc, _out, err = await cli(store, "domain", "remove", "old.test")
    assert rc == 1 and "--with-accounts" in err and "1 in the recycle bin" in err
    # Another enterprise cannot remove it.
    globex = Actor(name="globex-admin", enterprise_id=(
        await d.list_enterprises(CLI))[1]["id"], role="creator")
    with pytest.raises(NotFound):
        await d.remove_domain(globex, "old.test", confirm=True)

    rc, out, err = await cli(store, "domain", "remove", "old.test", "--with-accounts")
    assert rc == 0, err
    assert "3 account(s) in the recycle bin" in out and "domain add old.test" in out
    assert [x["name"] for x in await d.list_domains(CLI, "Acme")] == ["acme.test"]

    # In the bin, with days left (gone@ keeps its own date); groups are gone.
    page = await d.list_members(CLI, enterprise="Acme", status="deleted")
    assert {(x["address"], x["days_left"]) for x in page["items"]} == {
        ("ola@old.test", 30), ("gone@old.test", 20)}
    assert [x["address"] for x in await d.list_shared(CLI, enterprise="Acme", deleted=True)] \
        == ["desk@old.test"]
    assert (await d.list_members(CLI, enterprise="Globex", status="deleted"))["total"] == 0
    rc, out, _err = await cli(store, "recycle", "list", "--enterprise", "Acme")
    assert "ola@old.test\t30 days left" in out and "desk@old.test" in out
    with pytest.raises(NotFound):
        await d.get_group(CLI, "team@old.test")
    assert (await d.get_group(CLI, "all@acme.test"))["groups"] == []
    with pytest.raises(NotFound):  # the alias in the removed domain went with it
        await d.get_member(CLI, "ann.old@old.test")
    with store.engine.connect() as c:
        log = c.execute(sa.select(model.operation_log.c.after).where(
            model.operation_log.c.action == "domain.remove")).scalar_one()
    assert log == {"recycled": ["desk@old.test", "ola@old.test"],
                   "groups_deleted": ["team@old.test"]}

    # Restoring needs the domain back in the same enterprise.
    with pytest.raises(Conflict, match="add it again"):
        await d.restore_member(CLI, "ola@old.test")
    with pytest.raises(NotFound):  # not Globex's to restore
        await d.restore_member(globex, "ola@old.test")
    await d.add_domain(CLI, "old.test", "Acme")
    rc, out, err = await cli(store, "recycle", "restore", "ola@old.test")
    assert rc == 0 and "restored" in out, err
    back = await d.get_member(CLI, "ola@old.test")
    assert back["status"] == "enabled" and back["aliases"] == ["ola@acme.test"]
    assert back["message_count"] == 1  # its mail came back with it
    acct = await store.directory.get_account("ola@old.test")
    assert acct is not None and acct.domain_id is not None

    # The bin's other ways out work for an account whose domain is gone.
    await d.remove_domain(CLI, "old.test", confirm=True, enterprise="Acme")
    res = await d.reassign_recycled(CLI, "ola@old.test", "ann@acme.test")
    assert res["messages"] == 1 and res["folder"] == "Recycled/ola@old.test"
    await d.purge_member(CLI, "desk@old.test")
    with store.engine.begin() as c:  # ola's and gone's days are up
        c.execute(model.accounts.update().where(model.accounts.c.deleted_at.isnot(None))
                  .values(deleted_at=model.accounts.c.deleted_at - 31 * 86400))
    assert await d.sweep_recycle_bin(CLI) == 2
    with store.engine.connect() as c:
        left = c.execute(sa.select(model.accounts.c.address).order_by(
            model.accounts.c.address)).scalars().all()
    assert left == ["all@acme.test", "ann@acme.test"]

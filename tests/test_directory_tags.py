"""Member tags (manual §4.3.4) on the real store (SQLite, and PostgreSQL when
configured): defining, tagging, filtering, tags as a group source, scope."""

from __future__ import annotations

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.directory.service import DirectoryService
from exmaild.store.connector import Store

PW = "Secret123x"


@pytest_twisted.ensureDeferred
async def test_tags_on_members_and_as_group_source(store: Store) -> None:
    d = DirectoryService(store, store.cfg.directory)
    for ent, dom in (("Acme", "acme.test"), ("Globex", "globex.test")):
        await d.add_enterprise(CLI, ent)
        await d.add_domain(CLI, dom, ent)
    await d.add_department_path(CLI, "Sales", "Acme")
    await d.add_department_path(CLI, "Eng", "Acme")
    for who, dept in (("ann", "Sales"), ("bob", "Sales"), ("ed", "Eng")):
        await d.add_member(CLI, f"{who}@acme.test", PW, departments=[dept])
    await d.add_member(CLI, "gus@globex.test", PW)
    assert (await d.add_tag(CLI, " Managers ", "Acme"))["name"] == "Managers"
    await d.add_tag(CLI, "Remote", "Acme")
    with pytest.raises(Conflict):
        await d.add_tag(CLI, "Managers", "Acme")
    for bad in ("", "  ", "x" * 101, "a\nb"):
        with pytest.raises(Invalid):
            await d.add_tag(CLI, bad, "Acme")
    t = await d.tag_members(CLI, "Managers", add=["ann@acme.test", "ed@acme.test"],
                            enterprise="Acme")
    assert t["members"] == ["ann@acme.test", "ed@acme.test"]
    # Another enterprise's member cannot be tagged, nor is the tag there: nothing applied.
    with pytest.raises(NotFound):
        await d.tag_members(CLI, "Managers", add=["bob@acme.test", "gus@globex.test"],
                            enterprise="Acme")
    with pytest.raises(NotFound):
        await d.get_tag(CLI, "Managers", "Globex")
    assert (await d.get_tag(CLI, "Managers", "Acme"))["members"] == [
        "ann@acme.test", "ed@acme.test"]
    assert (await d.get_member(CLI, "ann@acme.test"))["tags"] == ["Managers"]
    page = await d.list_members(CLI, enterprise="Acme", tag="Managers")
    assert [x["address"] for x in page["items"]] == ["ann@acme.test", "ed@acme.test"]
    assert page["total"] == 2
    # A group with a tag source reaches whoever carries the tag now.
    g = await d.add_group(CLI, "mgmt@acme.test", tags=["Managers"])
    assert g["tags"] == ["Managers"] and g["recipients"] == ["ann@acme.test", "ed@acme.test"]
    await d.tag_members(CLI, "Managers", add=["bob@acme.test"], remove=["ed@acme.test"],
                        enterprise="Acme")
    g = await d.get_group(CLI, "mgmt@acme.test")
    assert g["recipients"] == ["ann@acme.test", "bob@acme.test"]
    # Two tag sources are two rows; removing one leaves the other.
    g = await d.edit_group(CLI, "mgmt@acme.test", add_tags=["Remote", "Managers"])
    assert g["tags"] == ["Managers", "Remote"]
    g = await d.edit_group(CLI, "mgmt@acme.test", remove_tags=["Managers"])
    assert g["tags"] == ["Remote"] and g["recipients"] == []
    await d.edit_group(CLI, "mgmt@acme.test", add_tags=["Managers"])
    # Renaming keeps members and group sources; deleting takes it off both.
    await d.rename_tag(CLI, "Managers", "Leads", "Acme")
    assert (await d.get_member(CLI, "bob@acme.test"))["tags"] == ["Leads"]
    with pytest.raises(Conflict):
        await d.rename_tag(CLI, "Leads", "Remote", "Acme")
    assert [t["name"] for t in await d.list_tags(CLI, "Acme")] == ["Leads", "Remote"]
    await d.delete_tag(CLI, "Leads", "Acme")
    assert (await d.get_member(CLI, "bob@acme.test"))["tags"] == []
    assert (await d.get_group(CLI, "mgmt@acme.test"))["tags"] == ["Remote"]
    with pytest.raises(NotFound):
        await d.list_members(CLI, enterprise="Acme", tag="Leads")
    # A graded admin tags only the members of its departments and defines no tags.
    await d.add_admin(CLI, "ann@acme.test", "graded", departments=["Sales"],
                      functions=["members"])
    acct = await store.directory.get_account("ann@acme.test")
    graded = await d.actor_for_token((await d.start_session(acct.id, "127.0.0.1"))["token"],
                                     "127.0.0.1")
    t = await d.tag_members(graded, "Remote", add=["bob@acme.test"])
    assert t["members"] == ["bob@acme.test"]
    with pytest.raises(Forbidden):
        await d.tag_members(graded, "Remote", add=["ed@acme.test"])  # Eng: not its own
    with pytest.raises(Forbidden):
        await d.add_tag(graded, "Mine")
    assert (await d.get_tag(CLI, "Remote", "Acme"))["members"] == ["bob@acme.test"]


@pytest_twisted.ensureDeferred
async def test_departments_as_csv(store: Store) -> None:
    import dataclasses

    d = DirectoryService(store, dataclasses.replace(store.cfg.directory,
                                                    max_department_depth=3))
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_department_path(CLI, "Sales")
    for text, message in (
        ("name\nX\n", "line 1: the header needs a path column"),
        ("path,shoe\nX,1\n", "line 1: unknown column"),
        ("path\nEng\nEng//Web\n", "line 3: malformed department path"),
        ("path\nEng\nA/B/C/D\n", "line 3: departments nest at most 3 levels"),
        ("path\nEng\nOps,extra\n", "line 3: more fields"),
    ):
        with pytest.raises(Invalid, match=message):
            await d.import_departments(CLI, text)
    assert [x["path"] for x in await d.list_departments(CLI)] == ["Sales"]  # nothing applied
    r = await d.import_departments(CLI, "path\nSales/East/North\nEng\nSales\n")
    assert r == {"rows": 3, "added": 3}  # Sales/East made on the way; Sales kept
    await d.add_member(CLI, "ann@acme.test", PW, departments=["Sales/East"])
    exported = await d.export_departments(CLI)
    assert exported.splitlines() == ["path,members", "Sales,0", "Sales/East,1",
                                     "Sales/East/North,0", "Eng,0"]
    # The export imports again as it is, adding nothing.
    assert await d.import_departments(CLI, exported) == {"rows": 4, "added": 0}

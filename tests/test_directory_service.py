"""The directory service layer on a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from exmaild.directory.service import DirectoryService
from exmaild.store.connector import Store

PW = "Secret123x"


def svc(store: Store, **overrides: int) -> DirectoryService:
    return DirectoryService(store, dataclasses.replace(store.cfg.directory, **overrides))


async def two_enterprises(d: DirectoryService) -> None:
    await d.add_enterprise(CLI, "Acme")
    await d.add_enterprise(CLI, "Globex")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_domain(CLI, "acme2.test", "Acme")
    await d.add_domain(CLI, "globex.test", "Globex")


@pytest_twisted.ensureDeferred
async def test_enterprises_and_domains(store: Store) -> None:
    d = svc(store)
    with pytest.raises(NotFound):
        await d.list_domains(CLI)
    await two_enterprises(d)
    with pytest.raises(Conflict):
        await d.add_enterprise(CLI, "Acme")
    with pytest.raises(Conflict):
        await d.add_domain(CLI, "ACME.test", "Globex")
    with pytest.raises(Invalid, match="several enterprises"):
        await d.add_domain(CLI, "other.test")
    doms = await d.list_domains(CLI, "Acme")
    assert [(x["name"], x["primary"]) for x in doms] == [("acme.test", True), ("acme2.test", False)]
    ents = {e["name"]: e for e in await d.list_enterprises(CLI)}
    assert ents["Acme"]["member_limit"] == 200 and ents["Globex"]["domains"] == ["globex.test"]


@pytest_twisted.ensureDeferred
async def test_departments_nest_order_move_delete(store: Store) -> None:
    d = svc(store, max_department_depth=4)
    await d.add_enterprise(CLI, "Acme")
    sales = await d.add_department_path(CLI, "Sales")
    await d.add_department_path(CLI, "Eng")
    east = await d.add_department_path(CLI, "Sales/East")
    with pytest.raises(NotFound):
        await d.add_department_path(CLI, "Nope/West")
    with pytest.raises(Conflict):
        await d.add_department_path(CLI, "Sales/East")
    with pytest.raises(Invalid):
        await d.add_department_path(CLI, "Sales//Bad")
    a = await d.add_department_path(CLI, "Sales/East/A")
    b = await d.add_department_path(CLI, "Sales/East/A/B")
    with pytest.raises(Invalid, match="at most 4"):
        await d.add_department_path(CLI, "Sales/East/A/B/C")
    # no cycles, and a move must keep the whole subtree within the depth limit
    with pytest.raises(Invalid, match="under itself"):
        await d.update_department(CLI, sales["id"], parent_id=b["id"])
    eng = await d.update_department(CLI, (await d.get_department(CLI, sales["id"]))["id"],
                                    name="Sales & Marketing")
    assert eng["path"] == "Sales & Marketing"
    moved = await d.update_department(CLI, a["id"], parent_id=None)
    assert moved["path"] == "A"
    assert (await d.get_department(CLI, b["id"]))["path"] == "A/B"
    # ordering among siblings
    await d.update_department(CLI, a["id"], position=-1)
    tops = [x["path"] for x in await d.list_departments(CLI) if x["parent_id"] is None]
    assert tops[0] == "A"
    # delete only when empty
    with pytest.raises(Conflict, match="sub-departments"):
        await d.delete_department(CLI, a["id"])
    await d.add_domain(CLI, "acme.test")
    await d.add_member(CLI, "ann@acme.test", PW, departments=["Sales & Marketing/East"])
    with pytest.raises(Conflict, match="members"):
        await d.delete_department(CLI, east["id"])
    await d.delete_department(CLI, b["id"])
    await d.delete_department(CLI, "A")
    assert {x["path"] for x in await d.list_departments(CLI)} == {
        "Sales & Marketing", "Sales & Marketing/East", "Eng"}


@pytest_twisted.ensureDeferred
async def test_members_aliases_status_recycle(store: Store) -> None:
    d = svc(store, max_aliases=2, member_limit=3)
    await two_enterprises(d)
    await d.add_department_path(CLI, "Sales", "Acme")
    m = await d.add_member(CLI, "Ann@Acme.test", PW, name="Ann Lee", nickname="Annie",
                           phone="123", title="Boss", gender="female", vip=True,
                           quota_bytes=2 << 30, departments=["Sales"])
    assert m["address"] == "ann@acme.test" and m["vip"] and m["status"] == "enabled"
    assert m["departments"][0]["path"] == "Sales"
    with pytest.raises(Invalid, match="weak password"):
        await d.add_member(CLI, "bob@acme.test", "short")
    with pytest.raises(Invalid, match="not a domain of this enterprise"):
        await d.add_member(CLI, "bob@globex.test", PW, enterprise="Acme")
    with pytest.raises(Conflict):
        await d.add_member(CLI, "ann@acme.test", PW)
    with pytest.raises(Invalid, match="gender"):
        await d.add_member(CLI, "bob@acme.test", PW, gender="x")
    # aliases: in the enterprise's domains only, at most max_aliases, unique
    await d.add_alias(CLI, "a.lee@acme2.test", "ann@acme.test")
    with pytest.raises(Invalid):
        await d.add_alias(CLI, "ann@globex.test", "ann@acme.test")
    await d.add_alias(CLI, "boss@acme.test", "ann@acme.test")
    with pytest.raises(Invalid, match="at most 2"):
        await d.add_alias(CLI, "third@acme.test", "ann@acme.test")
    with pytest.raises(Conflict):
        await d.add_member(CLI, "boss@acme.test", PW)
    acct = await store.directory.get_account("a.lee@acme2.test")
    assert acct is not None and acct.address == "ann@acme.test"
    await d.remove_alias(CLI, "boss@acme.test")
    assert (await d.get_member(CLI, "ann@acme.test"))["aliases"] == ["a.lee@acme2.test"]
    # disable / enable
    await d.set_enabled(CLI, "ann@acme.test", False)
    acct = await store.directory.get_account("ann@acme.test")
    assert acct is not None and not acct.enabled
    await d.set_enabled(CLI, "ann@acme.test", True)
    # member limit
    await d.add_member(CLI, "bob@acme.test", PW)
    await d.add_member(CLI, "cy@acme.test", PW)
    with pytest.raises(Invalid, match="member limit"):
        await d.add_member(CLI, "dan@acme.test", PW)
    # recycle bin: the address reaches nobody, the slot is free, restore brings it back
    await d.delete_member(CLI, "cy@acme.test")
    assert await store.directory.get_account("cy@acme.test") is None
    with pytest.raises(NotFound):
        await d.get_member(CLI, "cy@acme.test")
    with pytest.raises(Conflict, match="recycle bin"):
        await d.add_member(CLI, "cy@acme.test", PW)
    page = await d.list_members(CLI, enterprise="Acme", status="deleted")
    assert [x["address"] for x in page["items"]] == ["cy@acme.test"]
    await d.add_member(CLI, "dan@acme.test", PW)
    with pytest.raises(Invalid, match="member limit"):
        await d.add_member(CLI, "eve@acme.test", PW)
    with pytest.raises(Invalid, match="member limit"):
        await d.restore_member(CLI, "cy@acme.test")
    await d.delete_member(CLI, "dan@acme.test")
    await d.restore_member(CLI, "cy@acme.test")
    assert await store.directory.get_account("cy@acme.test") is not None


@pytest_twisted.ensureDeferred
async def test_member_listing_filters_and_pages(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    await d.add_department_path(CLI, "Sales")
    await d.add_department_path(CLI, "Sales/East")
    await d.add_department_path(CLI, "Eng")
    for i in range(12):
        dept = ["Sales", "Sales/East", "Eng"][i % 3]
        await d.add_member(CLI, f"u{i:02d}@acme.test", None, name=f"User {i}",
                           departments=[dept])
    await d.set_enabled(CLI, "u05@acme.test", False)
    seen, offset = [], 0
    while offset is not None:
        page = await d.list_members(CLI, limit=5, offset=offset)
        assert page["total"] == 12
        seen += [x["address"] for x in page["items"]]
        offset = page["next_offset"]
    assert seen == [f"u{i:02d}@acme.test" for i in range(12)]
    with_kids = await d.list_members(CLI, department="Sales", limit=50)
    only = await d.list_members(CLI, department="Sales", children=False, limit=50)
    assert with_kids["total"] == 8 and only["total"] == 4
    assert (await d.list_members(CLI, status="disabled"))["total"] == 1
    assert [x["address"] for x in (await d.list_members(CLI, q="user 1"))["items"]] == [
        "u01@acme.test", "u10@acme.test", "u11@acme.test"]
    assert (await d.list_members(CLI, q="%"))["total"] == 0
    with pytest.raises(Invalid):
        await d.list_members(CLI, limit=0)


@pytest_twisted.ensureDeferred
async def test_roles_scope_tokens_and_isolation(store: Store) -> None:
    d = svc(store)
    await two_enterprises(d)
    await d.add_department_path(CLI, "Sales", "Acme")
    await d.add_department_path(CLI, "Sales/East", "Acme")
    await d.add_department_path(CLI, "Eng", "Acme")
    await d.add_member(CLI, "boss@acme.test", PW)
    await d.add_member(CLI, "sam@acme.test", PW, departments=["Sales"])
    await d.add_member(CLI, "eve@acme.test", PW, departments=["Sales/East"])
    await d.add_member(CLI, "ed@acme.test", PW, departments=["Eng"])
    await d.add_member(CLI, "gus@globex.test", PW)
    await d.add_admin(CLI, "boss@acme.test", "creator")
    await d.add_admin(CLI, "sam@acme.test", "graded", departments=["Sales"],
                      functions=["members"])
    with pytest.raises(Invalid):
        await d.add_admin(CLI, "ed@acme.test", "graded")
    with pytest.raises(Conflict):
        await d.add_admin(CLI, "boss@acme.test", "super")

    sam = await d.start_session((await store.directory.get_account("sam@acme.test")).id, "1.2.3.4")
    graded = await d.actor_for_token(sam["token"], "1.2.3.4")
    assert graded.role == "graded" and graded.name == "sam@acme.test"
    # inside its departments (with children): fine; outside: forbidden
    page = await d.list_members(graded)
    assert {x["address"] for x in page["items"]} == {"sam@acme.test", "eve@acme.test"}
    await d.update_member(graded, "eve@acme.test", {"title": "Rep"})
    with pytest.raises(Forbidden):
        await d.update_member(graded, "ed@acme.test", {"title": "Rep"})
    with pytest.raises(Forbidden):
        await d.add_member(graded, "new@acme.test", PW, departments=["Eng"])
    with pytest.raises(Forbidden):
        await d.add_department(graded, "X", None)  # no "departments" function
    with pytest.raises(Forbidden):
        await d.create_token(graded, "x")
    with pytest.raises(Forbidden):
        await d.list_log(graded)

    # an enterprise token sees only its enterprise: the other's members are not found
    info, token = await d.create_token(CLI, "hr-sync", "Acme")
    acme = await d.actor_for_token(token, "")
    assert acme.enterprise_id is not None and acme.role == "token"
    assert "gus@globex.test" not in {x["address"] for x in (await d.list_members(acme))["items"]}
    for call in (d.get_member(acme, "gus@globex.test"),
                 d.set_enabled(acme, "gus@globex.test", False),
                 d.add_alias(acme, "x@acme.test", "gus@globex.test")):
        with pytest.raises(NotFound):
            await call
    with pytest.raises((NotFound, Invalid)):
        await d.add_member(acme, "x@globex.test", PW)
    with pytest.raises(Forbidden):
        await d.list_domains(acme, "Globex")
    assert [x["name"] for x in await d.list_domains(acme)] == ["acme.test", "acme2.test"]
    # revocation, and garbage
    await d.revoke_token(acme, info["id"])
    with pytest.raises(Unauthorized):
        await d.actor_for_token(token, "")
    with pytest.raises(Unauthorized):
        await d.actor_for_token("nonsense", "")
    # the operation log: who, what, target, before/after, ip
    log = await d.list_log(CLI, enterprise="Acme", limit=200)
    actions = [x["action"] for x in log["items"]]
    assert "member.update" in actions and "token.revoke" in actions
    upd = next(x for x in log["items"] if x["action"] == "member.update")
    assert upd["actor"] == "sam@acme.test" and upd["ip"] == "1.2.3.4"
    assert upd["before"] == {"title": ""} and upd["after"] == {"title": "Rep"}
    glog = await d.list_log(CLI, enterprise="Globex", limit=200)
    assert all("acme" not in x["target"] for x in glog["items"])


@pytest_twisted.ensureDeferred
async def test_refused_change_leaves_nothing(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    before = await d.change_counter()
    with pytest.raises(NotFound):
        await d.add_member(CLI, "ann@acme.test", PW, departments=["Nope"])
    assert await store.directory.get_account("ann@acme.test") is None
    assert await d.change_counter() == before
    await d.add_member(CLI, "ann@acme.test", PW)
    assert await d.change_counter() > before


@pytest_twisted.ensureDeferred
async def test_mail_groups_expand_once_loop_safe_and_permissions(store: Store) -> None:
    from exmaild.directory.groups import expand_groups, group_permits

    d = svc(store)
    await two_enterprises(d)
    await d.add_department_path(CLI, "Sales", "Acme")
    await d.add_department_path(CLI, "Sales/East", "Acme")
    ids = {}
    for who, dept in (("ann", "Sales"), ("bob", "Sales/East"), ("cy", None), ("dan", None)):
        m = await d.add_member(CLI, f"{who}@acme.test", None, departments=[dept] if dept else [])
        ids[who] = (await store.directory.get_account(m["address"])).id
    await d.add_member(CLI, "gus@globex.test", None)
    # a contains b and b contains a: loops end; ann reached three ways gets one copy
    a = await d.add_group(CLI, "a@acme.test", members=["ann@acme.test", "cy@acme.test"],
                          departments=["Sales"], externals=["Ext@Remote.test"])
    b = await d.add_group(CLI, "b@acme.test", members=["ann@acme.test"], groups=["a@acme.test"],
                          allow="members")
    await d.edit_group(CLI, "a@acme.test", add_groups=["b@acme.test"])
    assert a["recipients"] == ["ann@acme.test", "bob@acme.test", "cy@acme.test",
                               "ext@remote.test"]
    gid_a = (await store.directory.get_account("a@acme.test")).id
    gid_b = (await store.directory.get_account("b@acme.test")).id
    members, externals = await expand_groups(store.pool, [gid_a, gid_b])
    assert members == {ids["ann"], ids["bob"], ids["cy"]} and externals == {"ext@remote.test"}
    # another enterprise's member cannot be put in; no group in itself
    with pytest.raises(NotFound):
        await d.edit_group(CLI, "a@acme.test", add_members=["gus@globex.test"])
    with pytest.raises(Invalid):
        await d.edit_group(CLI, "a@acme.test", add_groups=["a@acme.test"])
    # disabled members take no group mail
    await d.set_enabled(CLI, "cy@acme.test", False)
    assert "cy@acme.test" not in (await d.get_group(CLI, "a@acme.test"))["recipients"]
    # who may send
    assert await group_permits(store.pool, gid_a, "anyone@remote.test")
    assert await group_permits(store.pool, gid_b, "bob@acme.test")  # through a's department
    assert await group_permits(store.pool, gid_b, "ext@remote.test")
    assert not await group_permits(store.pool, gid_b, "dan@acme.test")
    assert not await group_permits(store.pool, gid_b, "")
    await d.edit_group(CLI, "b@acme.test", allow="enterprise")
    assert await group_permits(store.pool, gid_b, "dan@acme.test")
    assert not await group_permits(store.pool, gid_b, "gus@globex.test")
    g = await d.add_group(CLI, "c@acme.test", allow="list", allow_list=["Boss@Remote.test"])
    gid_c = (await store.directory.get_account(g["address"])).id
    assert await group_permits(store.pool, gid_c, "boss@remote.test")
    assert not await group_permits(store.pool, gid_c, "ann@acme.test")
    await d.edit_group(CLI, "a@acme.test", remove_members=["ann@acme.test"])
    assert (await d.get_group(CLI, "a@acme.test"))["members"] == ["cy@acme.test"]
    assert b["groups"] == ["a@acme.test"]


@pytest_twisted.ensureDeferred
async def test_recycle_bin_days_purge_and_sweep(store: Store) -> None:
    import sqlalchemy as sa

    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.store import model

    d = svc(store, recycle_days=30)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    for who in ("ann", "bob", "cy"):
        await d.add_member(CLI, f"{who}@acme.test", None)
    ann = await store.directory.get_account("ann@acme.test")
    await store.ingestor.ingest(IngestRequest(
        b"Subject: kept\r\nMessage-ID: <r1@x>\r\n\r\nhi\r\n", [Target(ann.id, "INBOX")]))
    await d.delete_member(CLI, "ann@acme.test")
    await d.delete_member(CLI, "bob@acme.test")
    page = await d.list_members(CLI, status="deleted")
    assert {(x["address"], x["days_left"]) for x in page["items"]} == {
        ("ann@acme.test", 30), ("bob@acme.test", 30)}
    with pytest.raises(NotFound):
        await d.purge_member(CLI, "cy@acme.test")  # not in the recycle bin
    await d.purge_member(CLI, "bob@acme.test")
    # nothing expired yet; then ann's 30 days are up
    assert await d.sweep_recycle_bin(CLI) == 0
    with store.engine.begin() as c:
        c.execute(model.accounts.update().where(model.accounts.c.id == ann.id)
                  .values(deleted_at=sa.func.coalesce(model.accounts.c.deleted_at, 0)
                          - 31 * 86400))
    assert await d.sweep_recycle_bin(CLI) == 1
    with store.engine.connect() as c:
        left = c.execute(sa.select(model.accounts.c.address)).scalars().all()
        refs = c.execute(sa.select(model.contents.c.refcount)).scalars().all()
    assert left == ["cy@acme.test"] and refs in ([], [0])
    actions = [x["action"] for x in (await d.list_log(CLI, limit=50))["items"]]
    assert actions.count("member.purge") == 2


@pytest_twisted.ensureDeferred
async def test_vip_seat_pool(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme", vip_seats=1)
    await d.add_domain(CLI, "acme.test")
    await d.add_member(CLI, "ann@acme.test", None, vip=True)
    with pytest.raises(Invalid, match="no VIP seat"):
        await d.add_member(CLI, "bob@acme.test", None, vip=True)
    assert await store.directory.get_account("bob@acme.test") is None
    await d.add_member(CLI, "bob@acme.test", None)
    with pytest.raises(Invalid, match="no VIP seat"):
        await d.update_member(CLI, "bob@acme.test", {"vip": True, "title": "x"})
    assert (await d.get_member(CLI, "bob@acme.test"))["title"] == ""  # nothing applied
    await d.delete_member(CLI, "ann@acme.test")  # a freed seat returns to the pool
    await d.update_member(CLI, "bob@acme.test", {"vip": True})
    with pytest.raises(Invalid, match="no VIP seat"):
        await d.restore_member(CLI, "ann@acme.test")
    ent = await d.get_enterprise(CLI)
    assert (ent["vip_seats"], ent["vip_used"]) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_csv_import_all_or_nothing_and_export(store: Store) -> None:
    d = svc(store, member_limit=5000)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    await d.add_department_path(CLI, "Sales")
    await d.add_department_path(CLI, "Sales/East")
    head = "address,name,title,departments,vip,quota_bytes\n"
    rows = "".join(f"u{i:04d}@acme.test,User {i},Rep,Sales/East,no,1024\n" for i in range(1000))
    bad = head + rows + "broken address,X,,,,\n"
    with pytest.raises(Invalid, match="line 1002: malformed address"):
        await d.import_members(CLI, bad)
    for text, message in (
        (head + "a@acme.test,A,,Nope,,\n", "line 2: unknown department Nope"),
        (head + "a@acme.test,A,,,maybe,\n", "line 2: vip is yes or no"),
        (head + "a@acme.test,A,,,,\nA@acme.test,B,,,,\n", "line 3: address a@acme.test"),
        ("name\nX\n", "line 1: the header needs an address column"),
        ("address,shoe\n", "line 1: unknown column"),
    ):
        with pytest.raises((Invalid, NotFound, Conflict), match=message):
            await d.import_members(CLI, text)
    assert (await d.list_members(CLI))["total"] == 0  # nothing of a refused import
    assert (await d.import_members(CLI, head + rows))["imported"] == 1000
    page = await d.list_members(CLI, department="Sales", limit=1)
    assert page["total"] == 1000 and page["items"][0]["departments"][0]["path"] == "Sales/East"
    exported = await d.export_members(CLI)
    lines = exported.splitlines()
    assert lines[0] == ("address,name,nickname,phone,title,gender,external_id,departments,"
                        "vip,quota_bytes")
    assert len(lines) == 1001 and lines[1] == "u0000@acme.test,User 0,,,Rep,,,Sales/East,no,1024"


@pytest_twisted.ensureDeferred
async def test_address_prefix_changes_once(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    await d.add_domain(CLI, "acme2.test")
    await d.add_member(CLI, "ann@acme.test", None)
    await d.add_member(CLI, "bob@acme.test", None)
    with pytest.raises(Invalid, match="before @"):
        await d.rename_member(CLI, "ann@acme.test", "ann@acme2.test")
    with pytest.raises(Conflict):
        await d.rename_member(CLI, "ann@acme.test", "bob@acme.test")
    m = await d.rename_member(CLI, "ann@acme.test", "ann.lee@acme.test")
    assert m["address"] == "ann.lee@acme.test" and m["aliases"] == ["ann@acme.test"]
    old = await store.directory.get_account("ann@acme.test")
    assert old is not None and old.address == "ann.lee@acme.test"
    with pytest.raises(Conflict, match="once"):
        await d.rename_member(CLI, "ann.lee@acme.test", "annie@acme.test")

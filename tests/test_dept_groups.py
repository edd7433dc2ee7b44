"""A department's own mail group (issue #10, manual §4.4.2.2): members and
name follow the department; on the real store (SQLite, and PostgreSQL when
configured) through the service and exmailctl's handlers in-process. The API
and a delivery through SMTP are in tests/test_group_admin.py."""

from __future__ import annotations

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI, Actor
from exmaild.directory.errors import Conflict, Forbidden, NotFound
from exmaild.store.connector import Store

from .test_domain_removal import cli, svc

PW = "Secret123x"


@pytest_twisted.ensureDeferred
async def test_department_group_follows_the_department(store: Store) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    sales = await d.add_department_path(CLI, "Sales")
    await d.add_department_path(CLI, "Sales/East")
    await d.add_department_path(CLI, "Eng")
    await d.add_member(CLI, "ann@acme.test", PW, departments=["Sales"])
    await d.add_member(CLI, "bob@acme.test", PW, departments=["Sales/East"])
    await d.add_member(CLI, "eve@acme.test", PW, departments=["Eng"])

    rc, out, err = await cli(store, "dept", "group", "Sales", "sales@acme.test")
    assert rc == 0 and out.strip() == "group sales@acme.test follows department Sales", err
    g = await d.get_group(CLI, "sales@acme.test")
    assert (g["name"], g["department"]) == ("Sales", "Sales")
    assert g["recipients"] == ["ann@acme.test", "bob@acme.test"]  # with Sales/East
    # One per department; the address must be free; unknown departments are refused.
    rc, _out, err = await cli(store, "dept", "group", "Sales", "sales2@acme.test")
    assert rc == 1 and "has its group already: sales@acme.test" in err
    rc, _out, err = await cli(store, "dept", "group", "Eng", "ann@acme.test")
    assert rc == 1 and "in use" in err
    rc, _out, err = await cli(store, "dept", "group", "Nope", "nope@acme.test")
    assert rc == 1 and "unknown department" in err

    # Members follow: moved in, moved out, new, deleted.
    await d.update_member(CLI, "eve@acme.test", {"departments": ["Sales/East"]})
    await d.update_member(CLI, "ann@acme.test", {"departments": ["Eng"]})
    await d.add_member(CLI, "cy@acme.test", PW, departments=["Sales"])
    await d.delete_member(CLI, "bob@acme.test")
    assert (await d.get_group(CLI, "sales@acme.test"))["recipients"] == \
        ["cy@acme.test", "eve@acme.test"]
    # The name follows a rename; sources and name cannot be edited, allow can.
    await d.update_department(CLI, sales["id"], name="Sales EMEA")
    g = await d.get_group(CLI, "sales@acme.test")
    assert (g["name"], g["department"]) == ("Sales EMEA", "Sales EMEA")
    with pytest.raises(Conflict, match="department's group"):
        await d.edit_group(CLI, "sales@acme.test", add_members=["ann@acme.test"])
    with pytest.raises(Conflict, match="department's group"):
        await d.edit_group(CLI, "sales@acme.test", name="Other")
    g = await d.edit_group(CLI, "sales@acme.test", allow="enterprise",
                           add_representatives=["cy@acme.test"])
    assert (g["allow"], g["representatives"]) == ("enterprise", ["cy@acme.test"])

    # A graded admin cannot make one; another enterprise does not see it.
    acme_id = (await d.list_enterprises(CLI))[0]["id"]
    graded = Actor(name="g@acme.test", enterprise_id=acme_id, role="graded",
                   departments=frozenset({sales["id"]}), functions=frozenset({"members"}))
    with pytest.raises(Forbidden):
        await d.add_department_group(graded, "Eng", "eng@acme.test")
    await d.add_enterprise(CLI, "Globex")
    await d.add_domain(CLI, "globex.test", "Globex")
    globex = Actor(name="token:x", enterprise_id=(await d.list_enterprises(CLI))[1]["id"],
                   role="creator")
    with pytest.raises(NotFound):
        await d.get_group(globex, "sales@acme.test")
    with pytest.raises(NotFound):  # Acme's department id is not Globex's
        await d.add_department_group(globex, sales["id"], "s@globex.test")

    # An empty department goes with its group.
    eng = [x for x in await d.list_departments(CLI, "Acme") if x["path"] == "Eng"][0]
    await d.add_department_group(CLI, eng["id"], "eng@acme.test")
    await d.update_member(CLI, "ann@acme.test", {"departments": []})
    await d.delete_department(CLI, eng["id"])
    with pytest.raises(NotFound):
        await d.get_group(CLI, "eng@acme.test")

"""Mail groups as CSV (issue #10, manual §4.4.2.2): export, import all or
nothing with the bad line named, groups naming each other in any order; on
the real store (SQLite, and PostgreSQL when configured), through exmailctl's
handlers in-process. The API routes are in tests/test_group_admin.py."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI, Actor
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.store.connector import Store

from .test_domain_removal import cli, svc

PW = "Secret123x"


@pytest_twisted.ensureDeferred
async def test_groups_export_and_import(store: Store, tmp_path: Path) -> None:
    d = svc(store)
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test")
    await d.add_department_path(CLI, "Sales")
    await d.add_department_path(CLI, "Sales/East")
    await d.add_member(CLI, "ann@acme.test", PW)
    await d.add_member(CLI, "bob@acme.test", PW, departments=["Sales/East"])
    await d.add_tag(CLI, "Remote", enterprise="Acme")
    await d.tag_members(CLI, "Remote", add=["ann@acme.test"], enterprise="Acme")

    text = (
        "address,name,allow,members,departments,groups,externals,tags,representatives,"
        "all_staff\r\n"
        # outer names inner, which comes later in the file
        "outer@acme.test,Outer,members,ann@acme.test,,inner@acme.test,x@remote.test,,"
        "ann@acme.test,\r\n"
        "inner@acme.test,\"Inner, East\",anyone,,Sales,,,Remote,,\r\n"
        "all@acme.test,All,enterprise,,,,,,,yes\r\n")
    f = tmp_path / "groups.csv"
    f.write_text(text)
    rc, out, err = await cli(store, "group", "import", str(f))
    assert rc == 0 and out.strip() == "3 group(s) added from 3 row(s)", err
    inner = await d.get_group(CLI, "inner@acme.test")
    assert inner["name"] == "Inner, East"
    assert inner["recipients"] == ["ann@acme.test", "bob@acme.test"]  # Sales/East, tag
    outer = await d.get_group(CLI, "outer@acme.test")
    assert outer["recipients"] == ["ann@acme.test", "bob@acme.test", "x@remote.test"]
    assert (outer["allow"], outer["representatives"]) == ("members", ["ann@acme.test"])
    assert (await d.get_group(CLI, "all@acme.test"))["all_staff"] is True

    rc, exported, err = await cli(store, "group", "export", "--enterprise", "Acme")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [r["address"] for r in rows] == ["all@acme.test", "inner@acme.test",
                                           "outer@acme.test"]
    assert rows[1]["departments"] == "Sales" and rows[1]["tags"] == "Remote"
    assert rows[2]["groups"] == "inner@acme.test" and rows[2]["externals"] == "x@remote.test"

    # The export imports again into another enterprise with the same names.
    await d.add_enterprise(CLI, "Beta")
    await d.add_domain(CLI, "acme2.test", "Beta")
    await d.add_department_path(CLI, "Sales", enterprise="Beta")
    await d.add_member(CLI, "ann@acme2.test", PW)
    await d.add_tag(CLI, "Remote", enterprise="Beta")
    moved = exported.replace("@acme.test", "@acme2.test")
    r = await d.import_groups(CLI, moved, "Beta")
    assert r == {"rows": 3, "added": 3}
    assert (await d.get_group(CLI, "outer@acme2.test"))["groups"] == ["inner@acme2.test"]

    # One bad row: its line named, nothing applied.
    for bad, line, why in (
        ("address,members\r\nnew1@acme.test,\r\nnew2@acme.test,nobody@acme.test\r\n",
         3, "unknown member"),
        ("address,allow\r\nnew1@acme.test,\r\nnew2@acme.test,everyone\r\n", 3, "allow"),
        ("address\r\nnew1@acme.test\r\nnew1@acme.test\r\n", 3, "twice"),
        ("address\r\nnew1@acme.test\r\ninner@acme.test\r\n", 3, "in use"),
        ("address,departments\r\nnew1@acme.test,Nope\r\n", 2, "unknown department"),
        ("address,color\r\nnew1@acme.test,red\r\n", 1, "unknown column"),
        ("address\r\nnew1@globex.test\r\n", 2, "not a domain of this enterprise"),
    ):
        with pytest.raises((Invalid, NotFound, Conflict)) as e:
            await d.import_groups(CLI, bad, "Acme")
        assert e.value.message.startswith(f"line {line}: ") and why in e.value.message, \
            (bad, e.value.message)
    with pytest.raises(NotFound):
        await d.get_group(CLI, "new1@acme.test")
    rc, _out, err = await cli(store, "group", "import", str(tmp_path / "missing.csv"))
    assert rc == 1 and "cannot read" in err

    # A graded admin may not; another enterprise's export shows only its own.
    graded = Actor(name="g@acme.test", enterprise_id=(await d.list_enterprises(CLI))[0]["id"],
                   role="graded", departments=frozenset({1}), functions=frozenset({"members"}))
    with pytest.raises(Forbidden):
        await d.export_groups(graded)
    assert "@acme.test" not in await d.export_groups(CLI, "Beta")

"""Default quotas by role and per enterprise (issue #10 §7) on the real store
(SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted

from exmaild.directory.actor import CLI
from exmaild.directory.errors import Invalid
from exmaild.directory.service import DirectoryService
from exmaild.store.connector import Store

PW = "Secret123x"


async def quota(d: DirectoryService, address: str) -> int:
    return (await d.get_member(CLI, address))["quota_bytes"]


@pytest_twisted.ensureDeferred
async def test_default_quotas_follow_the_role(store: Store) -> None:
    d = DirectoryService(store, dataclasses.replace(
        store.cfg.directory, member_quota_bytes=1000, vip_quota_bytes=0))
    await d.add_enterprise(CLI, "Acme")
    await d.add_domain(CLI, "acme.test", "Acme")
    await d.add_member(CLI, "ann@acme.test", PW)
    await d.add_member(CLI, "vic@acme.test", PW, vip=True)
    await d.add_member(CLI, "own@acme.test", PW, quota_bytes=5000)
    assert [await quota(d, a) for a in ("ann@acme.test", "vic@acme.test", "own@acme.test")] \
        == [1000, 0, 5000]
    # A default quota follows the member to its new role; one set by hand stays.
    await d.update_member(CLI, "ann@acme.test", {"vip": True})
    assert await quota(d, "ann@acme.test") == 0
    await d.update_member(CLI, "ann@acme.test", {"vip": False})
    assert await quota(d, "ann@acme.test") == 1000
    await d.update_member(CLI, "own@acme.test", {"vip": True})
    assert await quota(d, "own@acme.test") == 5000
    await d.update_member(CLI, "vic@acme.test", {"vip": False, "quota_bytes": 7000})
    assert await quota(d, "vic@acme.test") == 7000
    # Imported members without a quota column get their role's too.
    await d.import_members(CLI, "address,vip\nimp@acme.test,no\nimv@acme.test,yes\n")
    assert [await quota(d, "imp@acme.test"), await quota(d, "imv@acme.test")] == [1000, 0]


@pytest_twisted.ensureDeferred
async def test_enterprise_quota_settings(store: Store) -> None:
    d = DirectoryService(store, dataclasses.replace(
        store.cfg.directory, member_quota_bytes=1000, shared_quota_bytes=3000))
    for ent, dom in (("Acme", "acme.test"), ("Globex", "globex.test")):
        await d.add_enterprise(CLI, ent)
        await d.add_domain(CLI, dom, ent)
    s = await d.get_enterprise_settings(CLI, "Acme")
    assert (s["member_quota_bytes"], s["vip_quota_bytes"], s["shared_quota_bytes"]) == \
        (None, None, None)  # the server's
    s = await d.update_enterprise_settings(
        CLI, {"member_quota_bytes": 2000, "vip_quota_bytes": 9000,
              "shared_quota_bytes": 4000}, "Acme")
    assert s["member_quota_bytes"] == 2000
    for bad in (-1, "1G", True, 2**63):
        with pytest.raises(Invalid, match="member_quota_bytes"):
            await d.update_enterprise_settings(CLI, {"member_quota_bytes": bad}, "Acme")
    await d.add_member(CLI, "ann@acme.test", PW)
    await d.add_member(CLI, "vic@acme.test", PW, vip=True)
    await d.add_member(CLI, "gus@globex.test", PW)  # another enterprise: the server's
    await d.add_shared(CLI, "desk@acme.test")
    await d.add_shared(CLI, "big@acme.test", quota_bytes=0)
    await d.add_shared(CLI, "desk@globex.test")
    assert [await quota(d, a) for a in ("ann@acme.test", "vic@acme.test", "gus@globex.test")] \
        == [2000, 9000, 1000]
    assert [(await d.get_shared(CLI, a))["quota_bytes"]
            for a in ("desk@acme.test", "big@acme.test", "desk@globex.test")] == [4000, 0, 3000]
    # Back to the server's default.
    await d.update_enterprise_settings(CLI, {"member_quota_bytes": None}, "Acme")
    await d.add_member(CLI, "bob@acme.test", PW)
    assert await quota(d, "bob@acme.test") == 1000

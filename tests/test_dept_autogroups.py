"""Department groups made automatically (issue 10, manual §4.4.2.2): with
the enterprise setting `department_groups` on, every new department — by
the API, exmailctl, a CSV import or Exmail's /cgi-bin/department/create —
gets its group at an address from the name's pinyin in the primary domain,
with a numeric suffix when taken; a rename keeps the address; deleting the
department deletes it; mail to it reaches the department. The real daemon
over HTTP and SMTP and real exmailctl processes, on SQLite (and PostgreSQL
when EXMAILD_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config
from .test_exmail_api import Exmail, secret
from .test_import_jobs import call

PW = "Secret123x"


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("deptauto")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url)
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    ok(config, "domain", "add", "acme2.test")
    ok(config, "dept", "add", "Sales")  # before the setting: gets its group when turned on
    ok(config, "user", "add", "sam@acme.test", "--password-stdin", "--dept", "Sales",
       stdin=f"{PW}\n")
    # Addresses the derivation will meet: an account and an alias.
    ok(config, "user", "add", "eng@acme.test", "--password-stdin", stdin=f"{PW}\n")
    ok(config, "alias", "add", "eng-2@acme.test", "eng@acme.test")
    tok = ok(config, "token", "create", "--name", "hr").strip()
    ok(config, "enterprise", "add", "Globex")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    globex = ok(config, "token", "create", "--enterprise", "Globex").strip()
    corp = secret(config, "Acme", "directory")
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"config": config, "ports": ports, "acme": tok, "globex": globex,
           "exmail": Exmail(ports["admin"], *corp)}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def group(env: dict[str, Any], address: str) -> tuple[int, Any]:
    status, body, _ = call(env["ports"]["admin"], "GET", f"/api/v1/groups/{address}",
                           env["acme"])
    return status, body


def test_off_by_default_then_every_route_makes_the_group(env: dict[str, Any]) -> None:
    config, port, tok = env["config"], env["ports"]["admin"], env["acme"]
    status, s, _ = call(port, "GET", "/api/v1/enterprise/settings", tok)
    assert status == 200 and s["department_groups"] is False
    ok(config, "dept", "add", "Early", "--enterprise", "Acme")
    assert group(env, "early@acme.test")[0] == 404  # off: no group

    # Turning it on makes the groups of the departments that have none.
    out = ok(config, "enterprise", "settings", "--department-groups", "yes",
             "--enterprise", "Acme")
    assert "department_groups" in out
    st, g = group(env, "sales@acme.test")
    assert st == 200 and g["department"] == "Sales" and g["recipients"] == ["sam@acme.test"]
    assert group(env, "early@acme.test")[0] == 200

    # exmailctl: pinyin of a Chinese name; taken addresses get a suffix.
    ok(config, "dept", "add", "销售部", "--enterprise", "Acme")
    st, g = group(env, "xiaoshoubu@acme.test")
    assert st == 200 and g["name"] == "销售部" and g["department"] == "销售部"
    ok(config, "dept", "add", "Eng", "--enterprise", "Acme")  # eng@ a member, eng-2@ an alias
    assert group(env, "eng-3@acme.test")[1]["department"] == "Eng"
    # The same name elsewhere in the tree: the next suffix.
    ok(config, "dept", "add", "Sales/Eng", "--enterprise", "Acme")
    assert group(env, "eng-4@acme.test")[1]["department"] == "Sales/Eng"

    # The API, then a rename (the address stays) and a delete (the group goes).
    status, dept, _ = call(port, "POST", "/api/v1/departments", tok, {"name": "研发 Center"})
    assert status == 201
    st, g = group(env, "yanfa-center@acme.test")
    assert st == 200 and g["name"] == "研发 Center"
    status, _b, _ = call(port, "PATCH", f"/api/v1/departments/{dept['id']}", tok,
                         {"name": "R&D"})
    assert status == 200
    st, g = group(env, "yanfa-center@acme.test")
    assert st == 200 and g["name"] == "R&D" and g["department"] == "R&D"
    assert call(port, "DELETE", f"/api/v1/departments/{dept['id']}", tok)[0] == 204
    assert group(env, "yanfa-center@acme.test")[0] == 404

    # A CSV import (missing parents made too) and Exmail's department/create.
    status, r, _ = call(port, "POST", "/api/v1/departments/import", tok,
                        {"csv": "path\r\nOps/North\r\n"})
    assert status == 200 and r["added"] == 2
    assert group(env, "ops@acme.test")[1]["department"] == "Ops"
    assert group(env, "north@acme.test")[1]["department"] == "Ops/North"
    ex: Exmail = env["exmail"]
    ex.ok("department/create", {"name": "客服", "parentid": 1})
    assert group(env, "kefu@acme.test")[1]["department"] == "客服"

    # The primary domain names the address.
    ok(config, "domain", "primary", "acme2.test")
    ok(config, "dept", "add", "Legal", "--enterprise", "Acme")
    assert group(env, "legal@acme2.test")[0] == 200
    assert group(env, "legal@acme.test")[0] == 404

    # Another enterprise, setting off, stays as it was.
    ok(config, "dept", "add", "Ops", "--enterprise", "Globex")
    st, groups, _ = call(port, "GET", "/api/v1/groups", env["globex"])
    assert st == 200 and groups["total"] == 0

    # Mail to a department's group reaches its members (sub-departments too).
    ok(config, "user", "add", "nia@acme.test", "--password-stdin", "--dept", "Ops/North",
       stdin=f"{PW}\n")
    assert group(env, "ops@acme.test")[1]["recipients"] == ["nia@acme.test"]
    with smtplib.SMTP("127.0.0.1", env["ports"]["smtp"], timeout=30) as mx:
        mx.sendmail("someone@example.org", ["ops@acme.test"],
                    "From: someone@example.org\r\nSubject: to ops\r\n\r\nhi\r\n")
    import imaplib

    deadline = time.monotonic() + 30
    while True:
        imap = imaplib.IMAP4("127.0.0.1", env["ports"]["imap"])
        imap.login("nia@acme.test", PW)
        n = int(imap.select("INBOX")[1][0])
        imap.logout()
        if n >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert n == 1

    # Turned off: new departments get none; existing groups stay.
    ok(config, "enterprise", "settings", "--department-groups", "no", "--enterprise", "Acme")
    ok(config, "dept", "add", "Late", "--enterprise", "Acme")
    assert group(env, "late@acme2.test")[0] == 404
    assert group(env, "ops@acme.test")[0] == 200


@pytest.mark.parametrize(("name", "prefix"), [
    ("销售部", "xiaoshoubu"), ("重庆办事处", "chongqingbanshichu"), ("绿化", "lvhua"),
    ("Sales East", "sales-east"), ("研发 R&D", "yanfa-r-d"), ("Café Ops", "cafe-ops"),
    ("市场·营销", "shichang-yingxiao"), ("---", "dept"), ("x" * 80, "x" * 48)])
def test_address_prefix(name: str, prefix: str) -> None:
    from exmaild.directory.dept_autogroup import address_prefix

    assert address_prefix(name) == prefix

"""Mail groups beyond add/edit/show (issue #10): listing and deleting them
through the admin API and exmailctl, "all staff" groups that follow the
directory, representatives who send as a group through submission, and a
group delivery where one member's full mailbox fails only that member (the
others get the message, the sender gets a DSN naming the member)."""

from __future__ import annotations

import email
import imaplib
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config
from .test_shared_mailboxes import api

PW = "Secret123x"


def ok(config: Path, *args: str) -> str:
    r = exmailctl(config, *args)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def check(resp: tuple[int, Any], status: int) -> Any:
    assert resp[0] == status, resp
    return resp[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("groups")
    db_url = ""
    if PG_URL:  # the daemon on PostgreSQL when the test database is configured
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url, queue={"scan_interval": 3600})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    acme = ok(config, "token", "create", "--enterprise", "Acme").strip()
    ok(config, "enterprise", "add", "Globex")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    globex = ok(config, "token", "create", "--enterprise", "Globex").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    port = ports["admin"]
    dept = check(api(port, "POST", "/departments", acme, {"name": "Sales"}), 201)
    for who, extra in (("ann", {}), ("bob", {"departments": [dept["id"]]}),
                       ("cy", {"quota_bytes": 100}), ("dan", {})):
        check(api(port, "POST", "/members", acme,
                  {"address": f"{who}@acme.test", "password": PW, **extra}), 201)
    check(api(port, "POST", "/members", globex,
              {"address": "gus@globex.test", "password": PW}), 201)
    check(api(port, "POST", "/groups", globex, {"address": "g@globex.test"}), 201)
    yield {"config": config, "ports": ports, "acme": acme, "globex": globex, "daemon": d}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def test_list_and_delete_groups_through_the_api(env: dict[str, Any]) -> None:
    port, acme, globex = env["ports"]["admin"], env["acme"], env["globex"]
    check(api(port, "POST", "/groups", acme,
              {"address": "inner@acme.test", "name": "Inner", "members": ["ann@acme.test"]}),
          201)
    check(api(port, "POST", "/groups", acme,
              {"address": "outer@acme.test", "groups": ["inner@acme.test"],
               "members": ["bob@acme.test"], "externals": ["x@remote.test"]}), 201)
    page = check(api(port, "GET", "/groups?limit=1", acme), 200)
    assert page["total"] >= 2 and len(page["items"]) == 1 and page["next_offset"] == 1
    found = check(api(port, "GET", "/groups?q=outer", acme), 200)["items"]
    assert [g["address"] for g in found] == ["outer@acme.test"]
    assert (found[0]["member_count"], found[0]["group_count"], found[0]["external_count"]) \
        == (1, 1, 1)
    # Another enterprise neither sees nor deletes them.
    theirs = check(api(port, "GET", "/groups", globex), 200)["items"]
    assert [g["address"] for g in theirs] == ["g@globex.test"]
    check(api(port, "DELETE", "/groups/inner@acme.test", globex), 404)
    # A member is not a group; deleting one removes its nesting too.
    check(api(port, "DELETE", "/groups/ann@acme.test", acme), 404)
    check(api(port, "DELETE", "/groups/inner@acme.test", acme), 204)
    check(api(port, "GET", "/groups/inner@acme.test", acme), 404)
    outer = check(api(port, "GET", "/groups/outer@acme.test", acme), 200)
    assert outer["groups"] == [] and outer["recipients"] == ["bob@acme.test", "x@remote.test"]
    log = check(api(port, "GET", "/log?action=group.delete", acme), 200)["items"]
    assert log[0]["target"] == "inner@acme.test"
    assert log[0]["before"]["nested_in"] == ["outer@acme.test"]
    check(api(port, "DELETE", "/groups/outer@acme.test", acme), 204)
    # The address is free again.
    check(api(port, "POST", "/groups", acme, {"address": "inner@acme.test"}), 201)
    check(api(port, "DELETE", "/groups/inner@acme.test", acme), 204)


def test_all_staff_follows_the_directory(env: dict[str, Any]) -> None:
    port, acme = env["ports"]["admin"], env["acme"]
    g = check(api(port, "POST", "/groups", acme,
                  {"address": "staff@acme.test", "all_staff": True}), 201)
    assert g["all_staff"] is True
    assert g["recipients"] == ["ann@acme.test", "bob@acme.test", "cy@acme.test",
                               "dan@acme.test"]  # members only: no group, no other enterprise
    check(api(port, "POST", "/members", acme, {"address": "new@acme.test", "password": PW}),
          201)
    check(api(port, "POST", "/members/dan@acme.test/disable", acme), 200)
    try:
        g = check(api(port, "GET", "/groups/staff@acme.test", acme), 200)
        assert g["recipients"] == ["ann@acme.test", "bob@acme.test", "cy@acme.test",
                                   "new@acme.test"]
    finally:
        check(api(port, "POST", "/members/dan@acme.test/enable", acme), 200)
        check(api(port, "DELETE", "/members/new@acme.test", acme), 204)
    g = check(api(port, "PATCH", "/groups/staff@acme.test", acme, {"all_staff": False}), 200)
    assert g["all_staff"] is False and g["recipients"] == []
    check(api(port, "DELETE", "/groups/staff@acme.test", acme), 204)


def test_representatives_send_as_the_group(env: dict[str, Any]) -> None:
    port, acme = env["ports"]["admin"], env["acme"]
    g = check(api(port, "POST", "/groups", acme,
                  {"address": "sales@acme.test", "members": ["bob@acme.test"],
                   "representatives": ["dan@acme.test"], "allow": "members"}), 201)
    assert g["representatives"] == ["dan@acme.test"] and g["recipients"] == ["bob@acme.test"]
    check(api(port, "POST", "/members/ann@acme.test/aliases", acme,
              {"alias": "x-sales@acme.test"}), 201)
    check(api(port, "POST", "/groups", acme,
              {"address": "bad@acme.test", "representatives": ["sales@acme.test"]}), 422)

    def mail_from(who: str, sender: str, rcpt: str = "bob@acme.test") -> tuple[int, int]:
        with smtplib.SMTP("127.0.0.1", env["ports"]["submission"], timeout=10) as sub:
            sub.ehlo("client.test")
            sub.login(who, PW)
            code = sub.mail(sender)[0]
            return code, (sub.rcpt(rcpt)[0] if code == 250 else 0)

    # dan may send as the group, and to it (allow=members counts representatives);
    # bob receives its mail but does not represent it; gus is another enterprise.
    assert mail_from("dan@acme.test", "sales@acme.test") == (250, 250)
    assert mail_from("dan@acme.test", "dan@acme.test", "sales@acme.test") == (250, 250)
    assert mail_from("bob@acme.test", "sales@acme.test")[0] == 553
    assert mail_from("gus@globex.test", "sales@acme.test")[0] == 553
    assert mail_from("ann@acme.test", "ann@acme.test", "sales@acme.test") == (250, 550)
    g = check(api(port, "PATCH", "/groups/sales@acme.test", acme,
                  {"remove_representatives": ["dan@acme.test"]}), 200)
    assert g["representatives"] == [] and g["recipients"] == ["bob@acme.test"]
    assert mail_from("dan@acme.test", "sales@acme.test")[0] == 553  # at its next login
    check(api(port, "DELETE", "/aliases/x-sales@acme.test", acme), 204)
    check(api(port, "DELETE", "/groups/sales@acme.test", acme), 204)


def _inbox(port: int, who: str) -> list[email.message.Message]:
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login(who, PW)
        imap.select("INBOX", readonly=True)
        typ, data = imap.search(None, "ALL")
        out = []
        for n in data[0].split():
            typ, msg = imap.fetch(n, "(RFC822)")
            out.append(email.message_from_bytes(msg[0][1]))
        return out
    finally:
        imap.logout()


def test_a_full_member_fails_only_itself(env: dict[str, Any]) -> None:
    port, acme, ports = env["ports"]["admin"], env["acme"], env["ports"]
    check(api(port, "POST", "/groups", acme,
              {"address": "team@acme.test", "members": ["bob@acme.test", "cy@acme.test"]}),
          201)
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10) as sub:
        sub.ehlo("client.test")
        sub.login("ann@acme.test", PW)
        refused = sub.sendmail("ann@acme.test", ["team@acme.test"],
                               b"Subject: to the team\r\nMessage-ID: <team-1@acme.test>\r\n"
                               b"\r\n" + b"x" * 200 + b"\r\n")
    assert refused == {}  # accepted for the group although cy is full
    # The copy to cy (quota 100 bytes) was refused: the sender hears of it.
    reports = [m for m in _inbox(ports["imap"], "ann@acme.test")
               if m.get_content_type() == "multipart/report"]
    assert len(reports) == 1, [m["Subject"] for m in reports]
    status = reports[0].get_payload()[1]
    fields = [p for p in status.get_payload()]
    per_rcpt = {k.lower(): v for part in fields[1:] for k, v in part.items()}
    assert per_rcpt["final-recipient"].endswith("cy@acme.test")
    assert per_rcpt["original-recipient"].endswith("team@acme.test")
    assert per_rcpt["action"] == "failed" and per_rcpt["status"] == "5.2.2"
    # bob has it, cy has nothing.
    assert [m["Message-ID"] for m in _inbox(ports["imap"], "bob@acme.test")] == \
        ["<team-1@acme.test>"]
    assert _inbox(ports["imap"], "cy@acme.test") == []
    out = env["daemon"].wait_for_log("bounced (mailbox full")
    assert "orig_to=<team@acme.test>" in out and "to=<cy@acme.test>" in out
    check(api(port, "DELETE", "/groups/team@acme.test", acme), 204)


def test_cli_group_list_and_delete(env: dict[str, Any]) -> None:
    config = env["config"]
    ok(config, "group", "add", "all@acme.test", "--all-staff", "--representative",
       "ann@acme.test", "--name", "Everyone")
    lines = ok(config, "group", "list", "--enterprise", "Acme").splitlines()
    assert lines == ["all@acme.test\tEveryone\tanyone\tall staff"], lines
    ok(config, "group", "delete", "all@acme.test")
    r = exmailctl(config, "group", "delete", "ann@acme.test")
    assert r.returncode != 0 and r.stderr.strip() == \
        "exmailctl: ann@acme.test is not a mail group", r.stderr
    assert ok(config, "group", "list", "--enterprise", "Acme") == ""


def test_tags_through_the_api_and_group_delivery(env: dict[str, Any]) -> None:
    port, acme, globex, ports = (env["ports"]["admin"], env["acme"], env["globex"],
                                 env["ports"])
    check(api(port, "POST", "/tags", acme, {"name": "Managers"}), 201)
    check(api(port, "POST", "/tags", acme, {"name": "Managers"}), 409)
    t = check(api(port, "POST", "/tags/Managers/members", acme,
                  {"add": ["bob@acme.test", "dan@acme.test"]}), 200)
    assert t["members"] == ["bob@acme.test", "dan@acme.test"]
    check(api(port, "POST", "/tags/Managers/members", acme, {"add": ["gus@globex.test"]}), 404)
    check(api(port, "GET", "/tags/Managers", globex), 404)  # the other enterprise's view
    page = check(api(port, "GET", "/members?tag=Managers", acme), 200)
    assert [x["address"] for x in page["items"]] == ["bob@acme.test", "dan@acme.test"]
    assert page["items"][0]["tags"] == ["Managers"]
    g = check(api(port, "POST", "/groups", acme,
                  {"address": "mgmt@acme.test", "tags": ["Managers"]}), 201)
    assert g["recipients"] == ["bob@acme.test", "dan@acme.test"]
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
        mx.sendmail("someone@remote.test", ["mgmt@acme.test"],
                    b"Subject: managers\r\nMessage-ID: <mgmt-1@remote.test>\r\n\r\nhi\r\n")
    for who in ("bob@acme.test", "dan@acme.test"):
        assert "<mgmt-1@remote.test>" in [m["Message-ID"] for m in _inbox(ports["imap"], who)]
    assert "<mgmt-1@remote.test>" not in [m["Message-ID"]
                                          for m in _inbox(ports["imap"], "ann@acme.test")]
    check(api(port, "DELETE", "/tags/Managers", acme), 204)
    assert check(api(port, "GET", "/groups/mgmt@acme.test", acme), 200)["recipients"] == []
    check(api(port, "DELETE", "/groups/mgmt@acme.test", acme), 204)
    # The CLI's forms for scripts.
    config = env["config"]
    ok(config, "tag", "add", "Remote", "--enterprise", "Acme")
    ok(config, "tag", "members", "Remote", "--add", "ann@acme.test", "--enterprise", "Acme")
    assert ok(config, "tag", "show", "Remote", "--enterprise", "Acme").split() == \
        ["ann@acme.test"]


def test_primary_domain(env: dict[str, Any]) -> None:
    port, acme, globex = env["ports"]["admin"], env["acme"], env["globex"]
    check(api(port, "POST", "/domains", acme, {"name": "acme-corp.test"}), 201)

    def primaries() -> list[str]:
        return [d["name"] for d in check(api(port, "GET", "/domains", acme), 200)["items"]
                if d["primary"]]

    assert primaries() == ["acme.test"]
    check(api(port, "POST", "/domains/acme-corp.test/primary", globex), 404)
    d = check(api(port, "POST", "/domains/acme-corp.test/primary", acme), 200)
    assert d["primary"] is True and primaries() == ["acme-corp.test"]
    check(api(port, "POST", "/domains/acme.test/primary", acme), 200)
    assert primaries() == ["acme.test"]
    log = check(api(port, "GET", "/log?action=domain.primary", acme), 200)["items"]
    assert log[0]["before"] == {"primary": "acme-corp.test"}
    check(api(port, "DELETE", "/domains/acme-corp.test", acme), 204)


def test_cli_recycle_export(env: dict[str, Any], tmp_path: Path) -> None:
    import zipfile

    port, acme, config = env["ports"]["admin"], env["acme"], env["config"]
    check(api(port, "DELETE", "/members/dan@acme.test", acme), 204)
    try:
        dest = tmp_path / "dan.zip"
        line = ok(config, "recycle", "export", "dan@acme.test", str(dest)).strip()
        assert line.startswith("dan@acme.test: ") and "written to" in line, line
        with zipfile.ZipFile(dest) as zf:
            assert b"<mgmt-1@remote.test>" in zf.read("INBOX.mbox")
    finally:
        check(api(port, "POST", "/members/dan@acme.test/restore", acme), 200)


def test_departments_csv_through_the_api(env: dict[str, Any]) -> None:
    port, acme, globex = env["ports"]["admin"], env["acme"], env["globex"]
    err = check(api(port, "POST", "/departments/import", acme,
                    {"csv": "path\nOps/North\nOps//South\n"}), 422)
    assert err["error"]["message"].startswith("line 3: ")
    r = check(api(port, "POST", "/departments/import", acme,
                  {"csv": "path\nOps/North\nOps/South\n"}), 200)
    assert r == {"rows": 2, "added": 3}
    csv = check(api(port, "GET", "/departments/export", acme), 200)["csv"]
    assert "Ops/North,0" in csv.splitlines() and "Sales,1" in csv.splitlines()
    assert "Ops" not in check(api(port, "GET", "/departments/export", globex), 200)["csv"]


def test_removing_a_domain_recycles_its_members(env: dict[str, Any]) -> None:
    """Its members go to the recycle bin with their mail; restored once the
    domain is added again (tests/test_domain_removal.py has the rest)."""
    import time

    ports, acme, globex = env["ports"], env["acme"], env["globex"]
    port = ports["admin"]
    check(api(port, "POST", "/domains", acme, {"name": "old-acme.test"}), 201)
    check(api(port, "POST", "/members", acme,
              {"address": "ola@old-acme.test", "password": PW}), 201)
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
        mx.sendmail("someone@remote.test", ["ola@old-acme.test"],
                    b"Subject: kept\r\nMessage-ID: <old-1@remote.test>\r\n\r\nhi\r\n")
    err = check(api(port, "DELETE", "/domains/old-acme.test", acme), 409)
    assert "confirm" in err["error"]["message"]
    check(api(port, "DELETE", "/domains/old-acme.test?confirm=true", globex), 404)
    check(api(port, "DELETE", "/domains/old-acme.test?confirm=true", acme), 204)
    bin_ = check(api(port, "GET", "/members?status=deleted&q=ola", acme), 200)["items"]
    assert [(x["address"], x["days_left"]) for x in bin_] == [("ola@old-acme.test", 30)]
    assert check(api(port, "GET", "/members?status=deleted&q=ola", globex), 200)["total"] == 0

    def rcpt() -> int:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
            mx.mail("someone@remote.test")
            return mx.rcpt("ola@old-acme.test")[0]

    deadline = time.monotonic() + 15  # the daemon sees the change within a second or two
    while rcpt() < 500:
        assert time.monotonic() < deadline, "mail to the removed domain is still accepted"
        time.sleep(0.3)
    err = check(api(port, "POST", "/members/ola@old-acme.test/restore", acme), 409)
    assert "domain add old-acme.test" in err["error"]["message"]
    check(api(port, "POST", "/members/ola@old-acme.test/restore", globex), 404)
    check(api(port, "POST", "/domains", acme, {"name": "old-acme.test"}), 201)
    assert check(api(port, "POST", "/members/ola@old-acme.test/restore", acme),
                 200)["status"] == "enabled"
    deadline = time.monotonic() + 15
    while True:  # the restored member logs in again and finds its mail
        try:
            msgs = _inbox(ports["imap"], "ola@old-acme.test")
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline, "the restored member cannot log in"
            time.sleep(0.3)
    assert [m["Message-ID"] for m in msgs] == ["<old-1@remote.test>"]


def test_department_group_through_the_api(env: dict[str, Any]) -> None:
    """A department's own group: made through the API, mail to it reaches
    the department's members once; its sources cannot be edited."""
    ports, acme, globex = env["ports"], env["acme"], env["globex"]
    port = ports["admin"]
    depts = check(api(port, "GET", "/departments", acme), 200)["items"]
    sales = [x for x in depts if x["path"] == "Sales"][0]
    check(api(port, "POST", f"/departments/{sales['id']}/group", globex,
              {"address": "s@globex.test"}), 404)
    check(api(port, "POST", f"/departments/{sales['id']}/group", acme,
              {"address": "nope@globex.test"}), 422)
    g = check(api(port, "POST", f"/departments/{sales['id']}/group", acme,
                  {"address": "sales-all@acme.test"}), 201)
    assert (g["name"], g["department"]) == ("Sales", "Sales")
    assert "bob@acme.test" in g["recipients"]
    check(api(port, "POST", f"/departments/{sales['id']}/group", acme,
              {"address": "sales-2@acme.test"}), 409)
    check(api(port, "PATCH", "/groups/sales-all@acme.test", acme,
              {"add_members": ["ann@acme.test"]}), 409)
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
            mx.sendmail("someone@remote.test", ["sales-all@acme.test"],
                        b"Subject: sales\r\nMessage-ID: <dg-1@remote.test>\r\n\r\nhi\r\n")
        for who in g["recipients"]:
            ids = [m["Message-ID"] for m in _inbox(ports["imap"], who)]
            assert ids.count("<dg-1@remote.test>") == 1, (who, ids)
    finally:
        check(api(port, "DELETE", "/groups/sales-all@acme.test", acme), 204)


def test_groups_csv_through_the_api(env: dict[str, Any]) -> None:
    port, acme, globex = env["ports"]["admin"], env["acme"], env["globex"]
    err = check(api(port, "POST", "/groups/import", acme,
                    {"csv": "address,members\ncsv1@acme.test,ann@acme.test\n"
                            "csv2@acme.test,gus@globex.test\n"}), 404)
    assert err["error"]["message"].startswith("line 3: ")
    check(api(port, "GET", "/groups/csv1@acme.test", acme), 404)  # nothing applied
    r = check(api(port, "POST", "/groups/import", acme,
                  {"csv": "address,name,members,groups\n"
                          "csv1@acme.test,One,ann@acme.test,csv2@acme.test\n"
                          "csv2@acme.test,Two,bob@acme.test,\n"}), 200)
    assert r == {"rows": 2, "added": 2}
    assert check(api(port, "GET", "/groups/csv1@acme.test", acme), 200)["recipients"] == \
        ["ann@acme.test", "bob@acme.test"]
    text = check(api(port, "GET", "/groups/export", acme), 200)["csv"]
    assert "csv1@acme.test,One,anyone,ann@acme.test,,csv2@acme.test,,,," in text.splitlines()
    assert "csv1@acme.test" not in check(api(port, "GET", "/groups/export", globex), 200)["csv"]
    for g in ("csv1@acme.test", "csv2@acme.test"):
        check(api(port, "DELETE", f"/groups/{g}", acme), 204)

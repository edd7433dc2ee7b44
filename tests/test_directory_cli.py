"""exmailctl's directory commands, and their effect on the running daemon."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time
from pathlib import Path

import pytest

from .daemon import Daemon, exmailctl, write_config

PW = "Secret123x"


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def fails(config: Path, *args: str, message: str, stdin: str | None = None) -> None:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode != 0, (args, r.stdout)
    assert message in r.stderr, (args, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line for scripts
    assert "Traceback" not in r.stderr


def test_cli_directory_forms(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    fails(config, "dept", "list", message="no exmaild database")  # reading creates none
    ok(config, "db", "upgrade")
    fails(config, "dept", "list", message="no enterprise yet")
    assert ok(config, "enterprise", "add", "Acme").strip() == "enterprise Acme added"
    ok(config, "domain", "add", "acme.test")
    ok(config, "domain", "add", "acme-corp.test")
    ok(config, "dept", "add", "Sales")
    ok(config, "dept", "add", "Sales/East")
    fails(config, "dept", "add", "Nope/West", message="unknown department Nope")
    fails(config, "dept", "add", "Sales/East", message="already exists")
    ok(config, "user", "add", "ann@acme.test", "--password-stdin", "--name", "Ann Lee",
       "--dept", "Sales/East", "--vip", "--quota", "2G", stdin=f"{PW}\n")
    ok(config, "user", "add", "bob@acme.test", "--password-stdin", "--dept", "Sales",
       stdin=f"{PW}\n")
    fails(config, "user", "add", "cy@acme.test", "--password-stdin", "--dept", "Eng",
          message="unknown department Eng", stdin=f"{PW}\n")
    assert "cy@acme.test" not in ok(config, "user", "list")  # refused: nothing applied
    lines = ok(config, "dept", "list").splitlines()
    assert lines == ["Sales\t1 members", "Sales/East\t1 members"]

    ok(config, "alias", "add", "a.lee@acme-corp.test", "ann@acme.test")
    fails(config, "alias", "add", "ann@elsewhere.test", "ann@acme.test",
          message="not a domain of this enterprise")
    fails(config, "alias", "add", "bob@acme.test", "ann@acme.test", message="already in use")
    show = dict(line.split(": ", 1) for line in ok(config, "user", "show", "ann@acme.test")
                .splitlines() if ": " in line)
    assert show["name"] == "Ann Lee" and show["vip"] == "yes" and show["status"] == "enabled"
    assert show["departments"] == "Sales/East" and show["aliases"] == "a.lee@acme-corp.test"
    assert show["usage"].startswith("0/2147483648 bytes")
    ok(config, "user", "disable", "ann@acme.test")
    assert "status: disabled" in ok(config, "user", "show", "ann@acme.test")
    ok(config, "user", "enable", "ann@acme.test")
    ok(config, "alias", "remove", "a.lee@acme-corp.test")
    fails(config, "alias", "remove", "a.lee@acme-corp.test", message="unknown alias")
    fails(config, "user", "show", "nobody@acme.test", message="unknown member")

    ok(config, "admin", "add", "ann@acme.test", "--role", "super")
    ok(config, "admin", "add", "bob@acme.test", "--role", "graded", "--dept", "Sales")
    fails(config, "admin", "add", "bob@acme.test", "--role", "graded",
          message="needs at least one department")
    fails(config, "admin", "add", "bob@acme.test", "--role", "king", message="invalid choice")
    token = ok(config, "token", "create", "--name", "hr-sync")
    assert re.fullmatch(r"exm_[A-Za-z0-9_-]{40,}\n", token), token

    # a second enterprise: --enterprise is now needed where it cannot be inferred
    ok(config, "enterprise", "add", "Globex")
    fails(config, "enterprise", "add", "Globex", message="already exists")
    fails(config, "token", "create", message="several enterprises")
    fails(config, "dept", "add", "Ops", message="several enterprises")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    ok(config, "dept", "add", "Ops", "--enterprise", "Globex")
    assert ok(config, "dept", "list", "--enterprise", "Globex").splitlines() == ["Ops\t0 members"]
    ok(config, "user", "add", "gus@globex.test", "--password-stdin", stdin=f"{PW}\n")
    fails(config, "alias", "add", "gus@acme.test", "gus@globex.test",
          message="not a domain of this enterprise")
    ok(config, "token", "create", "--enterprise", "Globex")

    # recycle bin
    ok(config, "user", "remove", "bob@acme.test")
    assert "bob@acme.test" in ok(config, "recycle", "list", "--enterprise", "Acme")
    fails(config, "user", "show", "bob@acme.test", message="unknown member")
    ok(config, "recycle", "restore", "bob@acme.test")
    assert "status: enabled" in ok(config, "user", "show", "bob@acme.test")

    # CSV: a bad row names its line and applies nothing; export reads back
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("address,name,departments\nzed@acme.test,Zed,Sales\n"
                        "yan@acme.test,Yan,Nope\n")
    fails(config, "user", "import", str(csv_file), "--enterprise", "Acme",
          message="line 3: unknown department Nope")
    fails(config, "user", "show", "zed@acme.test", message="unknown member")
    csv_file.write_text("address,name,departments\nzed@acme.test,Zed,Sales\n"
                        "yan@acme.test,Yan,Sales/East\n")
    assert "2 member(s) imported" in ok(config, "user", "import", str(csv_file),
                                        "--enterprise", "Acme")
    exported = ok(config, "user", "export", "--enterprise", "Acme")
    assert "yan@acme.test,Yan,,,,,,Sales/East,no,1073741824" in exported.splitlines()

    ok(config, "user", "rename", "yan@acme.test", "yan.li@acme.test")
    assert "aliases: yan@acme.test" in ok(config, "user", "show", "yan@acme.test")
    fails(config, "user", "rename", "yan.li@acme.test", "yl@acme.test", message="once")

    log = ok(config, "log", "list", "--enterprise", "Acme", "--limit", "100")
    for action in ("member.add", "member.disable", "alias.add", "admin.set", "token.create",
                   "member.delete", "member.restore"):
        assert f"\t{action}\t" in log, action
    assert "globex" not in log


def test_daemon_sees_cli_changes(tmp_path: Path) -> None:
    # A long lookup cache: only the change watch can make the daemon see a
    # change within the test's patience.
    config, ports = write_config(tmp_path, smtp={"lookup_cache_ttl": 120})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    ok(config, "domain", "add", "acme-corp.test")
    ok(config, "user", "add", "ann@acme.test", "--password-stdin", stdin=f"{PW}\n")
    d = Daemon(config, ports, tmp_path)
    d.start(wait=60)
    try:
        def rcpt(address: str) -> tuple[int, bytes]:
            # A connection each time: refused RCPTs count towards the error limit.
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
                mx.ehlo("client.test")
                mx.mail("someone@remote.test")
                return mx.rcpt(address)

        assert rcpt("ann@acme.test")[0] == 250  # now in the daemon's cache
        assert rcpt("a.lee@acme-corp.test")[0] == 550

        # An alias added by the CLI receives mail for the member ...
        ok(config, "alias", "add", "a.lee@acme-corp.test", "ann@acme.test")
        wait_until(lambda: rcpt("a.lee@acme-corp.test")[0] == 250)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
            mx.sendmail("someone@remote.test", ["a.lee@acme-corp.test"],
                        b"Subject: via alias\r\nMessage-ID: <alias-1@remote.test>\r\n\r\nhi\r\n")
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
        imap.login("ann@acme.test", PW)
        imap.select("INBOX")
        wait_until(lambda: imap.search(None, "ALL")[1][0].split() != [])
        assert b"via alias" in imap.fetch(b"1", "(BODY[HEADER.FIELDS (SUBJECT)])")[1][0][1]
        imap.logout()
        # ... and is one she may send as through submission.
        sub = smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10)
        sub.ehlo("client.test")
        sub.login("ann@acme.test", PW)
        assert sub.mail("a.lee@acme-corp.test")[0] == 250
        assert sub.rcpt("ann@acme.test")[0] == 250
        sub.rset()
        sub.quit()

        # Disabled: the next RCPT is refused 550 5.2.1, and no protocol logs in.
        ok(config, "user", "disable", "ann@acme.test")
        wait_until(lambda: rcpt("ann@acme.test")[0] == 550)
        code, text = rcpt("ann@acme.test")
        assert (code, text.split()[0]) == (550, b"5.2.1"), text
        assert rcpt("a.lee@acme-corp.test")[0] == 550
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("ann@acme.test", PW)
        imap.logout()
        sub = smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10)
        sub.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            sub.login("ann@acme.test", PW)
        sub.close()

        # Enabled again: mail and logins work, and the old mail is still there.
        ok(config, "user", "enable", "ann@acme.test")
        wait_until(lambda: rcpt("ann@acme.test")[0] == 250)
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
        imap.login("ann@acme.test", PW)
        assert imap.select("INBOX")[1] == [b"1"]
        imap.logout()
    finally:
        d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the daemon did not see the change"
        time.sleep(0.2)


def test_group_mail_reaches_each_member_once(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from exmaild.store import model as m

    config, ports = write_config(tmp_path, queue={"scan_interval": 3600})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    ok(config, "dept", "add", "Sales")
    ok(config, "dept", "add", "Sales/East")
    for who, dept in (("ann", "Sales"), ("bob", "Sales/East"), ("cy", None), ("dan", None)):
        ok(config, "user", "add", f"{who}@acme.test", "--password-stdin",
           *(("--dept", dept) if dept else ()), stdin=f"{PW}\n")
    ok(config, "group", "add", "team@acme.test", "--member", "ann@acme.test",
       "--member", "cy@acme.test", "--external", "partner@remote.test")
    # all@ reaches ann three ways (member, department, nested group) and loops back
    ok(config, "group", "add", "all@acme.test", "--member", "ann@acme.test", "--dept", "Sales",
       "--group", "team@acme.test")
    ok(config, "group", "edit", "team@acme.test", "--add-group", "all@acme.test")
    ok(config, "group", "add", "board@acme.test", "--member", "dan@acme.test",
       "--allow", "members")
    assert ok(config, "group", "show", "all@acme.test").split() == [
        "ann@acme.test", "bob@acme.test", "cy@acme.test", "partner@remote.test"]
    r = exmailctl(config, "group", "add", "x@acme.test", "--member", "nobody@acme.test")
    assert r.returncode != 0 and "unknown member" in r.stderr

    d = Daemon(config, ports, tmp_path)
    d.start(wait=60)
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as mx:
            mx.ehlo("client.test")
            mx.mail("someone@remote.test")
            code, text = mx.rcpt("board@acme.test")
            assert (code, text.split()[0]) == (550, b"5.7.1"), text
            mx.rset()
            mx.sendmail("someone@remote.test", ["all@acme.test", "cy@acme.test"],
                        b"Subject: to all\r\nMessage-ID: <all-1@remote.test>\r\n\r\nhello\r\n")
            mx.sendmail("dan@acme.test", ["board@acme.test"],
                        b"Subject: board\r\nMessage-ID: <board-1@remote.test>\r\n\r\nhi\r\n")
    finally:
        d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]

    eng = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'exmaild.sqlite'}")
    with eng.connect() as c:
        rows = c.execute(
            sa.select(m.accounts.c.address, m.messages.c.content_id)
            .select_from(m.messages.join(m.mailboxes).join(m.accounts).join(m.contents))
            .where(m.contents.c.message_id == "<all-1@remote.test>")).all()
        queued = c.execute(sa.select(m.queue_recipients.c.recipient)).scalars().all()
        board = c.execute(
            sa.select(m.accounts.c.address)
            .select_from(m.messages.join(m.mailboxes).join(m.accounts).join(m.contents))
            .where(m.contents.c.message_id == "<board-1@remote.test>")).scalars().all()
    eng.dispose()
    assert sorted(a for a, _ in rows) == ["ann@acme.test", "bob@acme.test", "cy@acme.test"]
    assert len({cid for _, cid in rows}) == 1  # one blob, one content row for all
    # the external member is queued once (a bounce to the sender may follow it)
    assert queued.count("partner@remote.test") == 1
    assert board == ["dan@acme.test"]

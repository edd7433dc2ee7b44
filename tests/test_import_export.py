"""exmailctl import maildir|mbox and export, against a Maildir the lab Dovecot wrote.

What a client sees over IMAP is compared: per folder, in UID order, each
message's flags, BODY.PEEK[] digest and INTERNALDATE.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import twisted.mail.imap4  # noqa: F401  (registers the "imap4-utf-7" codec)

from .conftest import BACKENDS, _wipe_pg
from .daemon import Daemon, exmailctl, write_config
from .opsutil import Folder, snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import lab as labmod  # noqa: E402

PASSWORD = "Secr3tPass"
DOVECOT_USER = "user1@example.test"
DOVECOT_USER2 = "user2@example.test"  # serves an export of ours
# Dovecot folder -> exmaild folder (a localised system-folder name is the system folder).
SAME_FOLDER = {"Trash": "Deleted"}


def mail(n: int, extra: str = "", body: str = "") -> bytes:
    text = body or f"Hello {n}.\r\nFrom here on, a line that mbox must quote.\r\n"
    return (f"From: Bob <bob@remote.test>\r\nTo: <{DOVECOT_USER}>\r\nSubject: note {n}\r\n"
            f"Message-ID: <i{n}@remote.test>\r\nDate: Tue, 01 Dec 2026 09:{n % 60:02d}:00 +0100"
            f"\r\n{extra}\r\n{text}").encode()


# folder, flags, internal date, message
APPENDS: list[tuple[str, str, str, bytes]] = [
    ("INBOX", "(\\Seen)", "01-Jan-2024 10:00:00 +0000", mail(1)),
    ("INBOX", "()", "02-Feb-2024 11:30:00 +0200", mail(2)),
    ("INBOX", "(\\Seen \\Flagged $Label1)", "03-Mar-2024 12:00:00 +0000", mail(3)),
    ("INBOX", "(\\Answered \\Seen Work)", "04-Apr-2024 08:00:00 -0500", mail(4)),
    ("INBOX", "(\\Deleted)", "05-May-2024 09:00:00 +0000",
     mail(5, body="From the top\r\n>From quoted\r\n\r\nFrom again\r\n" + "z" * 300_000 + "\r\n")),
    ("Work", "(\\Seen)", "06-Jun-2024 10:00:00 +0000", mail(6)),
    ("Work/Reports", "(\\Draft \\Seen)", "07-Jul-2024 10:00:00 +0000", mail(7)),
    ("Work/Reports", "($Label1 Work)", "08-Aug-2024 10:00:00 +0000", mail(8)),
    ("Projekte/&ANw-bersicht", "(\\Flagged)",  # Projekte/Übersicht
     "09-Sep-2024 10:00:00 +0000", mail(9)),
    ("Sent", "(\\Seen)", "10-Oct-2024 10:00:00 +0000", mail(10)),
    ("Trash", "(\\Seen \\Deleted)", "11-Nov-2024 10:00:00 +0000", mail(11)),
    ("INBOX", "(\\Seen)", "12-Dec-2024 10:00:00 +0000", mail(1)),  # the same message again
]


def _dovecot_ready() -> str | None:
    if os.geteuid() != 0:
        return "the lab Dovecot needs root"
    if not shutil.which("dovecot"):
        return "dovecot is not installed"
    try:
        labmod.config_source()
    except FileNotFoundError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def dovecot_maildir() -> Iterator[tuple[Path, dict, labmod.Lab]]:
    """A Maildir++ tree Dovecot wrote (APPEND with flags, keywords, dates, folders),
    plus what Dovecot's IMAP shows of it."""
    why = _dovecot_ready()
    if why:
        pytest.skip(why)
    # Its own temp dir (pytest's is 0700: Dovecot's unprivileged processes
    # could not reach their files); removed afterwards.
    lab = labmod.Lab([DOVECOT_USER, DOVECOT_USER2], imap_port=labmod.free_port(),
                     pop3_port=labmod.free_port(), services=("dovecot",))
    with lab:
        imap = imaplib.IMAP4(lab.host, lab.imap_port)
        imap.login(DOVECOT_USER, lab.password)
        for folder in dict.fromkeys(f for f, *_ in APPENDS):
            if folder != "INBOX":
                assert imap.create(f'"{folder}"')[0] == "OK", folder
        for folder, flags, date, raw in APPENDS:
            typ, data = imap.append(f'"{folder}"', flags, f'"{date}"', raw)
            assert typ == "OK", (folder, data)
        imap.logout()
        # Two more delivered straight into new/, as an MDA leaves them.
        lab.load_maildir(DOVECOT_USER, [mail(20), mail(21)], subdir="new")
        seen = snapshot(lab.imap_port, DOVECOT_USER, lab.password)
        root = lab.maildir(DOVECOT_USER)
        assert (root / ".Work.Reports" / "dovecot-keywords").exists()
        assert any(n.endswith(":2,S") for n in os.listdir(root / "cur"))
        yield root, seen, lab


@pytest.fixture(params=BACKENDS)
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        _wipe_pg(url)
    config, ports = write_config(tmp_path, url)
    for args in (("domain", "add", "example.test"),
                 *[("user", "add", u, "--password", PASSWORD)
                   for u in (DOVECOT_USER, "carol@example.test", "dave@example.test")]):
        r = exmailctl(config, *args)
        assert r.returncode == 0, r.stderr
    d = Daemon(config, ports, tmp_path)
    d.start()
    yield d
    d.kill()


def _same(a: Folder, b: Folder) -> None:
    assert a.by_order() == b.by_order()


def _compare_to_dovecot(seen: dict[str, Folder], got: dict[str, Folder]) -> None:
    for name, folder in seen.items():
        ours = SAME_FOLDER.get(name, name)
        assert ours in got, (name, sorted(got))
        assert got[ours].by_order() == folder.by_order(), name
    mapped = {SAME_FOLDER.get(n, n) for n in seen}
    for name, folder in got.items():
        if name not in mapped:
            assert not folder.messages, name  # only the empty system folders


def test_import_dovecot_maildir_byte_exact_and_idempotent(
        dovecot_maildir: tuple[Path, dict, labmod.Lab], daemon: Daemon) -> None:
    root, seen, lab = dovecot_maildir
    assert len(seen["INBOX"].messages) == 8 and "Projekte/&ANw-bersicht" in seen
    r = exmailctl(daemon.config, "import", "maildir", DOVECOT_USER, str(root))
    assert r.returncode == 0, r.stderr
    assert "INBOX: 8 imported, 0 already there" in r.stdout, r.stdout
    got = snapshot(daemon.ports["imap"], DOVECOT_USER, PASSWORD)
    _compare_to_dovecot(seen, got)

    # Again: nothing is added, nothing changes.
    r = exmailctl(daemon.config, "import", "maildir", DOVECOT_USER, str(root))
    assert r.returncode == 0, r.stderr
    assert "INBOX: 0 imported, 8 already there" in r.stdout, r.stdout
    again = snapshot(daemon.ports["imap"], DOVECOT_USER, PASSWORD)
    assert {n: f.messages for n, f in again.items()} == {n: f.messages for n, f in got.items()}

    # Export as Maildir++ and import that into another account: the same mail.
    out = daemon.cwd / "export-md"
    r = exmailctl(daemon.config, "export", DOVECOT_USER, str(out))
    assert r.returncode == 0, r.stderr
    assert (out / ".Work.Reports" / "cur").is_dir() and (out / "cur").is_dir()
    r = exmailctl(daemon.config, "import", "maildir", "carol@example.test", str(out))
    assert r.returncode == 0, r.stderr
    carol = snapshot(daemon.ports["imap"], "carol@example.test", PASSWORD)
    assert set(carol) == set(got)
    for name in got:
        _same(carol[name], got[name])

    # Dovecot serves that export with our UIDVALIDITY and UIDs (dovecot-uidlist).
    lab.reset_maildir(DOVECOT_USER2)
    theirs = lab.maildir(DOVECOT_USER2)
    shutil.rmtree(theirs)
    shutil.copytree(out, theirs)
    uid, gid = labmod._ids("mail")
    for p in [theirs, *theirs.rglob("*")]:
        os.chown(p, uid, gid)
    served = snapshot(lab.imap_port, DOVECOT_USER2, lab.password)
    assert {n: (f.uidvalidity, f.messages) for n, f in served.items()} == {
        n: (f.uidvalidity, f.messages) for n, f in got.items()}

    # And as mbox files, one per folder.
    mb = daemon.cwd / "export-mbox"
    r = exmailctl(daemon.config, "export", DOVECOT_USER, str(mb), "--format", "mbox")
    assert r.returncode == 0, r.stderr
    assert (mb / "INBOX.mbox").is_file() and (mb / "Work" / "Reports.mbox").is_file()
    for name in got:
        real = name.encode().decode("imap4-utf-7")  # IMAP shows it in modified UTF-7
        path = mb.joinpath(*real.split("/")[:-1]) / (real.split("/")[-1] + ".mbox")
        r = exmailctl(daemon.config, "import", "mbox", "dave@example.test", str(path),
                      "--folder", real)
        assert r.returncode == 0, r.stderr
    dave = snapshot(daemon.ports["imap"], "dave@example.test", PASSWORD)
    for name in got:
        _same(dave[name], got[name])


MBOX = (
    b"From alice@remote.test Thu Jan  4 10:11:12 2024\n"
    b"From: Alice <alice@remote.test>\nSubject: one\nStatus: RO\nX-Status: AF\n"
    b"X-Keywords: $Label2 Later\n\n"
    b"First line.\n>From a quoted line\n>>From doubly quoted\nFrom-not-a-separator\n\n"
    b"From bob@remote.test Fri Feb  9 01:02:03 2024\n"
    b"From: Bob <bob@remote.test>\nSubject: two\nStatus: O\n\n"
    b"Second.\n\n\n"
    b"From carol@remote.test Sat Mar 16 23:59:59 2024\n"
    b"From: Carol <carol@remote.test>\nSubject: three\nX-Status: T\n\nThird.\n"
)


def test_mbox_import_export_import_round_trip(daemon: Daemon) -> None:
    src = daemon.cwd / "old.mbox"
    src.write_bytes(MBOX)
    user = DOVECOT_USER
    r = exmailctl(daemon.config, "import", "mbox", user, str(src), "--folder", "Old/2024")
    assert r.returncode == 0, r.stderr
    assert "Old/2024: 3 imported" in r.stdout, r.stdout
    first = snapshot(daemon.ports["imap"], user, PASSWORD, keep_bodies=True)["Old/2024"]
    bodies = [first.bodies[u] for u in sorted(first.bodies)]
    assert bodies[0] == (
        b"From: Alice <alice@remote.test>\r\nSubject: one\r\n\r\n"
        b"First line.\r\nFrom a quoted line\r\n>From doubly quoted\r\nFrom-not-a-separator\r\n"
    )
    assert bodies[1].endswith(b"Second.\r\n\r\n")  # one of its two empty lines was its own
    flags = [f for f, _, _ in first.by_order()]
    assert flags == [{"\\Seen", "\\Answered", "\\Flagged", "$Label2", "Later"}, set(),
                     {"\\Draft"}]
    dates = [d for _, _, d in first.by_order()]
    assert dates == [1704363072, 1707440523, 1710633599]

    # Re-running adds nothing.
    r = exmailctl(daemon.config, "import", "mbox", user, str(src), "--folder", "Old/2024")
    assert r.returncode == 0 and "0 imported, 3 already there" in r.stdout, r.stdout

    out = daemon.cwd / "export"
    r = exmailctl(daemon.config, "export", user, str(out), "--format", "mbox")
    assert r.returncode == 0, r.stderr
    exported = (out / "Old" / "2024.mbox").read_bytes()
    assert b"\n>From a quoted line\n>>From doubly quoted\n" in exported
    r = exmailctl(daemon.config, "import", "mbox", "carol@example.test",
                  str(out / "Old" / "2024.mbox"), "--folder", "Archive")
    assert r.returncode == 0, r.stderr
    again = snapshot(daemon.ports["imap"], "carol@example.test", PASSWORD)["Archive"]
    _same(again, first)
    # Exported and imported into the first account again: still nothing added.
    r = exmailctl(daemon.config, "import", "mbox", user, str(out / "Old" / "2024.mbox"),
                  "--folder", "Old/2024")
    assert r.returncode == 0 and "0 imported, 3 already there" in r.stdout, r.stdout


def test_import_errors_are_one_line(daemon: Daemon) -> None:
    cases = [
        (("import", "maildir", "nobody@example.test", str(daemon.cwd)), "unknown account"),
        (("import", "maildir", DOVECOT_USER, str(daemon.cwd / "nosuch")), "not a Maildir"),
        (("import", "mbox", DOVECOT_USER, str(daemon.cwd / "exmaild.toml")), "not an mbox"),
        (("export", DOVECOT_USER, str(daemon.cwd)), "not an empty directory"),
    ]
    for args, text in cases:
        r = exmailctl(daemon.config, *args)
        assert r.returncode == 1, (args, r.stdout)
        assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_progress_bar_on_a_terminal(daemon: Daemon) -> None:
    """On a tty the bar is redrawn in place on stderr (run under script(1))."""
    if not shutil.which("script"):
        pytest.skip("script(1) is not installed")
    src = daemon.cwd / "many.mbox"
    with open(src, "wb") as f:
        for n in range(200):
            f.write(b"From x@remote.test Thu Jan  4 10:11:12 2024\n")
            f.write(mail(100 + n).replace(b"\r\n", b"\n").replace(b"\nFrom here", b"\n>From here"))
            f.write(b"\n")
    import subprocess

    from .daemon import env
    cmd = (f"{sys.executable} -m exmaild.cli --config {daemon.config} "
           f"import mbox {DOVECOT_USER} {src} --folder Many")
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                          env=env(), timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout
    assert b"\rMany [" in proc.stdout and b"200 imported" in proc.stdout, proc.stdout[-500:]
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"]):
        pass  # the daemon still serves


def test_mbox_reader_and_writer_edges() -> None:
    import io

    from exmaild.ops import mbox
    from exmaild.store import flags as fl

    msgs = [
        (mail(1, body="From start\r\n>From one\r\n>>From two\r\n"), fl.SEEN | fl.DRAFT, ("$A",)),
        (mail(2, body="x" * 5000 + "\r\n"), 0, ()),  # over the limit below
        (mail(3, body="no final line end"), fl.DELETED | fl.ANSWERED, ()),
        (b"Subject: headers only\r\n", fl.FLAGGED, ("k1", "k2")),
    ]
    f = io.BytesIO()
    for n, (raw, mask, kws) in enumerate(msgs):
        mbox.write(f, raw, mask, kws, 1700000000 + n)
    f.seek(0)
    got = list(mbox.read(f, limit=4000))
    assert [m.internal_date for m in got] == [1700000000, 1700000001, 1700000002, 1700000003]
    assert got[0].raw == msgs[0][0] and (got[0].flags, got[0].keywords) == msgs[0][1:]
    assert got[1].raw is None and got[1].size > 4000  # too large: skipped, not truncated
    assert got[2].raw == msgs[2][0] + b"\r\n"  # a line end is added, nothing else
    assert got[2].flags == fl.DELETED | fl.ANSWERED
    assert got[3].raw == msgs[3][0] and got[3].keywords == ("k1", "k2")
    # A file with CRLF line ends reads the same.
    f.seek(0)
    crlf = io.BytesIO(f.read().replace(b"\n", b"\r\n"))
    assert [m.raw for m in mbox.read(crlf, limit=4000)] == [m.raw for m in got]

"""exmailctl's progress display of CSV imports (issue 10): a bar on a
terminal (driven through a pty), plain lines every few seconds elsewhere,
standard output unchanged. Real exmailctl processes on the real store
(SQLite, and PostgreSQL when EXMAILD_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import env, exmailctl, write_config

BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


@pytest.fixture(params=BACKENDS)
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    db_url = ""
    if request.param == "postgresql":
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    cfg, _ports = write_config(tmp_path, db_url, directory={"member_limit": 10000})
    for args in (("enterprise", "add", "Acme"), ("domain", "add", "acme.test"),
                 ("dept", "add", "Sales")):
        r = exmailctl(cfg, *args)
        assert r.returncode == 0, r.stderr
    return cfg


def members(tmp: Path, prefix: str, n: int, bad_line: int | None = None) -> Path:
    lines = ["address,name,departments"]
    lines += [f"{prefix}{i}@acme.test,M {i},{'Nope' if bad_line == i + 2 else 'Sales'}"
              for i in range(n)]
    f = tmp / f"{prefix}.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


LINE = re.compile(r"exmailctl: import (\d+)%: (checking|applying) (\d+)/(\d+) rows")


def test_plain_lines_when_stderr_is_not_a_terminal(config: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXMAILCTL_PROGRESS_INTERVAL", "0.01")
    r = exmailctl(config, "user", "import", str(members(tmp_path, "a", 200)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "200 member(s) imported\n"
    lines = r.stderr.splitlines()
    assert lines, "no progress line"
    got = [LINE.fullmatch(x) for x in lines]
    assert all(got), lines
    pcts = [int(g[1]) for g in got if g]
    assert pcts == sorted(pcts) and all(0 <= p <= 100 for p in pcts)
    assert all(g[4] == "200" and int(g[3]) <= 200 for g in got if g)

    # A failed import: the progress lines, then the one error line, nothing applied.
    r = exmailctl(config, "user", "import", str(members(tmp_path, "b", 150, bad_line=120)))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == "exmailctl: line 120: unknown department Nope"
    assert all(LINE.fullmatch(x) for x in r.stderr.splitlines()[:-1])
    assert "unknown member" in exmailctl(config, "user", "show", "b1@acme.test").stderr

    # Departments and groups show it the same way.
    depts = tmp_path / "d.csv"
    depts.write_text("path\n" + "".join(f"Eng/T{i}\n" for i in range(200)))
    r = exmailctl(config, "dept", "import", str(depts))
    assert r.returncode == 0 and r.stdout == "201 department(s) added from 200 row(s)\n"
    assert all(LINE.fullmatch(x) for x in r.stderr.splitlines())

    # Without the short interval a quick import prints nothing on stderr.
    monkeypatch.delenv("EXMAILCTL_PROGRESS_INTERVAL")
    r = exmailctl(config, "user", "import", str(members(tmp_path, "c", 3)))
    assert (r.returncode, r.stdout, r.stderr) == (0, "3 member(s) imported\n", "")


def run_on_pty(config: Path, *args: str) -> tuple[int, str, str]:
    """exmailctl with its stderr on a pseudo-terminal, stdout on a pipe."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "exmaild.cli", "--config", str(config), *args],
                         stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                         env=env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.stdout is not None
    out = p.stdout.read().decode()
    return p.wait(timeout=120), out, b"".join(chunks).decode()


def test_a_bar_on_a_terminal(config: Path, tmp_path: Path) -> None:
    rc, out, term = run_on_pty(config, "user", "import", str(members(tmp_path, "t", 200)))
    assert rc == 0, term
    assert out == "200 member(s) imported\n"
    # Redrawn in place, left full, then a new line (the pty makes it \r\n).
    assert term.endswith("] 100% 200/200 rows\x1b[K\r\n"), repr(term[-200:])
    assert "\r[" + "#" * 30 + "] 100%" in term
    assert "\n" not in term[:-1]  # one line, redrawn

    # A failure: the bar's line is ended before the error's own line.
    rc, out, term = run_on_pty(config, "user", "import",
                               str(members(tmp_path, "u", 150, bad_line=120)))
    assert rc == 1 and out == ""
    assert term.endswith("\r\nexmailctl: line 120: unknown department Nope\r\n") or \
        term == "exmailctl: line 120: unknown department Nope\r\n", repr(term[-200:])

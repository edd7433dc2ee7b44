"""Operating exmaild on a real machine: environment errors in one line with
nothing half-created, exmailctl finding the daemon's config and never
creating a database to read from it, output for people (issue 11, items 1-2).

Everything runs the real daemon (twistd) and the real exmailctl as
subprocesses, as an administrator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from . import forkserver
from .conftest import free_ports
from .daemon import Daemon, env, write_config

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
          "--pidfile=", "exmaild"]
CTL = [sys.executable, "-m", "exmaild.cli"]
PG_URL = os.environ.get("EXMAILD_TEST_DATABASE_URL", "")


def run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    e = env()
    e.pop("EXMAILD_CONFIG", None)
    e.update(extra_env or {})
    # A changed PYTHONPATH must reach a fresh interpreter's imports.
    forked = forkserver.ENABLED and "PYTHONPATH" not in (extra_env or {})
    if forked and args[:len(TWISTD)] == TWISTD:
        return forkserver.run("twistd", args[3:], env=e, cwd=str(cwd))
    if forked and args[:3] == CTL:
        return forkserver.run("cli", args[3:], env=e, cwd=str(cwd), stdin=stdin)
    return subprocess.run(args, cwd=cwd, env=e, capture_output=True, text=True, timeout=60,
                          input=stdin)


def daemon(cwd: Path, *args: str, extra_env: dict[str, str] | None = None):
    return run([*TWISTD, *args], cwd, extra_env)


def ctl(cwd: Path, *args: str, extra_env: dict[str, str] | None = None,
        stdin: str | None = None):
    return run([*CTL, *args], cwd, extra_env, stdin)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = (r.stdout + r.stderr).strip()
    assert r.returncode != 0, out
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert 1 <= len(lines) <= 3, out
    for n in needles:
        assert n in out, (n, out)
    return out


def test_busy_port_names_the_key_and_creates_nothing(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", ports["admin"]))
    busy.listen()
    try:
        r = daemon(tmp_path, "--config", str(config))
    finally:
        busy.close()
    assert_one_line_error(r, "listen.admin", f"127.0.0.1:{ports['admin']}", "already in use")
    assert not (tmp_path / "var").exists()


def test_two_listeners_on_one_port(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    text = config.read_text().replace(f'pop3 = "127.0.0.1:{ports["pop3"]}"',
                                      f'pop3 = "127.0.0.1:{ports["imap"]}"')
    config.write_text(text)
    assert_one_line_error(daemon(tmp_path, "--config", str(config)), "listen.pop3",
                          "listen.imap")
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
def test_bad_certificate_is_one_line(tmp_path: Path, problem: str) -> None:
    cert = tmp_path / "server.pem"
    if problem == "not-pem":
        cert.write_text("this is not a certificate\n")
    config, _ = write_config(tmp_path, tls={"cert": str(cert), "key": str(cert)})
    r = daemon(tmp_path, "--config", str(config))
    assert_one_line_error(r, "tls.cert", str(cert),
                          "No such file" if problem == "missing" else "not a PEM certificate")
    assert not (tmp_path / "var").exists()


def test_unwritable_data_directory(tmp_path: Path) -> None:
    # A file in the way (as root, permissions cannot make a directory unwritable).
    (tmp_path / "afile").write_text("")
    config, _ = write_config(tmp_path)
    config.write_text(config.read_text().replace(str(tmp_path / "var"),
                                                 str(tmp_path / "afile" / "var")))
    assert_one_line_error(daemon(tmp_path, "--config", str(config)), "paths.data",
                          f"cannot create {tmp_path / 'afile' / 'var'}")


def _no_psycopg(tmp_path: Path) -> dict[str, str]:
    """An environment where `import psycopg` fails as on a machine without it."""
    block = tmp_path / "nopsycopg"
    block.mkdir()
    (block / "psycopg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    return {"PYTHONPATH": f"{block}{os.pathsep}{env()['PYTHONPATH']}"}


def test_missing_postgres_driver_says_which_extra(tmp_path: Path) -> None:
    url = "postgresql+psycopg://exmaild@127.0.0.1:5432/exmaild"
    config, _ = write_config(tmp_path, db_url=url)
    blocked = _no_psycopg(tmp_path)
    for r in (daemon(tmp_path, "--config", str(config), extra_env=blocked),
              ctl(tmp_path, "--config", str(config), "domain", "list", extra_env=blocked),
              ctl(tmp_path, "--config", str(config), "domain", "add", "x.test",
                  extra_env=blocked)):
        assert_one_line_error(r, "pip install '.[postgres]'")
    assert not (tmp_path / "var").exists()


def test_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"postgresql+psycopg://exmaild:s3cretpw@127.0.0.1:{port}/exmaild"
    config, _ = write_config(tmp_path, db_url=url)
    for r in (daemon(tmp_path, "--config", str(config)),
              ctl(tmp_path, "--config", str(config), "user", "list")):
        out = assert_one_line_error(r, "cannot connect to database", f"127.0.0.1:{port}")
        assert "s3cretpw" not in out
    assert not (tmp_path / "var").exists()


@pytest.mark.skipif(not PG_URL, reason="needs EXMAILD_TEST_DATABASE_URL (PostgreSQL)")
def test_missing_postgres_database_says_to_create_it(tmp_path: Path) -> None:
    name = f"nosuch_{uuid.uuid4().hex[:8]}"
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    config, _ = write_config(tmp_path, db_url=url)
    for r in (daemon(tmp_path, "--config", str(config)),
              ctl(tmp_path, "--config", str(config), "domain", "add", "x.test")):
        assert_one_line_error(r, f"database {name} does not exist", "createdb")
    assert not (tmp_path / "var").exists()


# -- exmailctl finds the daemon's config --------------------------------------
def test_read_only_command_never_creates_a_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("domain", "list"), ("user", "list"), ("db", "status"), ("queue", "list")):
        r = ctl(elsewhere, *args)
        assert_one_line_error(r, "no exmaild database at", str(elsewhere / "var"),
                              "--config")
    assert list(elsewhere.iterdir()) == []


def test_writing_command_says_it_created_the_database(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    r = ctl(tmp_path, "--config", str(config), "domain", "add", "example.test")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "var" / "exmaild.sqlite"
    assert r.stderr.strip() == f"exmailctl: created a new database at {db}"
    r = ctl(tmp_path, "--config", str(config), "domain", "add", "other.test")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_config_search_order_is_the_daemons(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    assert ctl(tmp_path, "--config", str(config), "domain", "add", "found.test").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # $EXMAILD_CONFIG from any directory.
    r = ctl(elsewhere, "domain", "list", extra_env={"EXMAILD_CONFIG": str(config)})
    assert r.returncode == 0 and r.stdout.split() == ["found.test"], r.stderr
    # ./exmaild.toml in the working directory.
    r = ctl(tmp_path, "domain", "list")
    assert r.returncode == 0 and r.stdout.split() == ["found.test"], r.stderr
    # --config wins over $EXMAILD_CONFIG; a missing named file is an error, not defaults.
    r = ctl(elsewhere, "--config", str(tmp_path / "nope.toml"), "domain", "list",
            extra_env={"EXMAILD_CONFIG": str(config)})
    assert_one_line_error(r, "nope.toml")
    assert list(elsewhere.iterdir()) == []
    # db status says which config, database and data folder it uses.
    r = ctl(elsewhere, "db", "status", extra_env={"EXMAILD_CONFIG": str(config)})
    assert r.returncode == 0, r.stderr
    assert f"config:   {config}" in r.stdout
    assert f"database: sqlite:///{tmp_path / 'var' / 'exmaild.sqlite'}" in r.stdout
    assert f"data:     {tmp_path / 'var'}" in r.stdout
    # The daemon follows the same order: no --config, $EXMAILD_CONFIG names the file.
    d = Daemon(config, ports, elsewhere)
    d.start(extra_env={"EXMAILD_CONFIG": str(config)}, config_arg=False)
    try:
        assert d.health()["database"] is True
    finally:
        d.stop()
    assert f"starting: config {config}" in d.output()
    assert [p.name for p in elsewhere.iterdir()] == ["twistd.out"]


def test_version_and_output_for_people(tmp_path: Path) -> None:
    from exmaild import __version__

    r = ctl(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"exmailctl (exmaild) {__version__}"
    config, _ = write_config(tmp_path)
    c = ["--config", str(config)]
    assert ctl(tmp_path, *c, "domain", "add", "example.test").returncode == 0
    r = ctl(tmp_path, *c, "user", "add", "ann@example.test", "--name", "Ann Lee",
            "--quota", "2G", "--vip", "--password-stdin", stdin="Secr3tPass\n")
    assert r.returncode == 0 and r.stdout.strip() == "account ann@example.test added (VIP)"
    assert ctl(tmp_path, *c, "user", "add", "bo@example.test",
               "--password-stdin", stdin="Secr3tPass\n").returncode == 0
    lines = ctl(tmp_path, *c, "user", "list").stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "NAME", "MESSAGES", "USED", "QUOTA", "FLAGS"]
    assert lines[1].split() == ["ann@example.test", "Ann", "Lee", "0", "0", "B", "2.0", "GiB",
                                "vip"]
    assert lines[2].split() == ["bo@example.test", "-", "0", "0", "B", "unlimited", "-"]
    r = ctl(tmp_path, *c, "domain", "remove", "example.test")
    assert_one_line_error(r, "--with-accounts", "2 account(s)")
    for args in (("user", "passwd", "x@example.test", "--password", "Secr3tPass"),
                 ("user", "remove", "x@example.test")):
        assert_one_line_error(ctl(tmp_path, *c, *args), "unknown account x@example.test")

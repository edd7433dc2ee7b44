"""The real daemon through twistd, and exmailctl as a subprocess."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from exmaild.auth.passwords import WeakPassword, check_policy

from .daemon import Daemon, exmailctl, write_config


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    config, ports = write_config(tmp_path)
    d = Daemon(config, ports, tmp_path)
    yield d
    d.kill()


def test_daemon_starts_answers_healthz_and_stops_on_sigterm(daemon: Daemon) -> None:
    took = daemon.start()
    h = daemon.health()
    assert h["status"] == "ok" and h["database"] and h["schema_current"]
    assert "version" in h
    # Start-up time is reported, not asserted (a loaded CI machine must not
    # fail on it); the README's figure comes from this line in quiet runs.
    print(f"healthz answered {took:.2f}s after start")
    # twistd re-raises the signal it stopped on, so the status is "killed by
    # SIGTERM" after a clean shutdown (systemd counts that as success).
    assert daemon.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    out = daemon.output()
    assert "Server Shut Down." in out
    assert "Traceback" not in out
    assert (daemon.cwd / "var" / "tls" / "selfsigned.crt").exists()
    assert (daemon.cwd / "var" / "log" / "exmaild.json").exists()


def test_daemon_refuses_bad_config_listing_every_error(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, limits={"message_size": -1, "bogus": 1,
                                                   "listen_backlog": 0})
    config.write_text(config.read_text() + '[nosuch]\nx = 1\n')
    d = Daemon(config, ports, tmp_path)
    with pytest.raises(RuntimeError) as e:
        d.start(wait=10)
    msg = str(e.value)
    assert "limits.message_size: must be positive" in msg
    assert "limits.bogus: unknown key" in msg
    assert "limits.listen_backlog: must be positive" in msg
    assert "nosuch: unknown key" in msg


def test_daemon_refuses_out_of_date_schema(tmp_path: Path) -> None:
    import sqlalchemy as sa

    config, ports = write_config(tmp_path)
    assert exmailctl(config, "db", "upgrade").returncode == 0
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'exmaild.sqlite'}")
    with eng.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num='0000'"))
    d = Daemon(config, ports, tmp_path)
    with pytest.raises(RuntimeError, match="exmailctl --config FILE db upgrade"):
        d.start(wait=10)
    assert exmailctl(config, "db", "status").returncode == 1


def test_exmailctl_domains_users_and_bad_input(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    ok = exmailctl(config, "domain", "add", "example.test")
    assert ok.returncode == 0, ok.stderr
    assert exmailctl(config, "domain", "list").stdout.split() == ["example.test"]
    r = exmailctl(config, "user", "add", "bob@example.test", "--password", "Secr3tPass", "--vip")
    assert r.returncode == 0, r.stderr
    assert "bob@example.test" in exmailctl(config, "user", "list").stdout

    cases = [
        (("domain", "add", "example.test"), "already exists"),
        (("domain", "add", "not a domain"), "malformed domain"),
        (("user", "add", "x@unknown.test", "--password", "Secr3tPass"), "unknown domain"),
        (("user", "add", "bob@example.test", "--password", "Secr3tPass"), "already in use"),
        (("user", "add", "not-an-address", "--password", "Secr3tPass"), "malformed address"),
        (("user", "add", "a b@example.test", "--password", "Secr3tPass"), "malformed address"),
        (("user", "add", "carol@example.test", "--password", "Carol1234"), "account name"),
        (("user", "passwd", "nobody@example.test", "--password", "Secr3tPass"), "unknown account"),
        (("user", "remove", "nobody@example.test"), "unknown account"),
        (("domain", "remove", "nosuch.test"), "unknown domain"),
        (("domain", "remove", "example.test"), "still has 1 account"),
    ]
    for args, message in cases:
        r = exmailctl(config, *args)
        assert r.returncode != 0, (args, r.stdout)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr

    r = exmailctl(config, "user", "add", "carol@example.test", "--password-stdin",
                  stdin="Str0ngerPw\n")
    assert r.returncode == 0, r.stderr
    r = exmailctl(config, "user", "passwd", "carol@example.test", "--password-stdin",
                  stdin="N3wPassword\n")
    assert r.returncode == 0, r.stderr
    assert exmailctl(config, "user", "remove", "carol@example.test").returncode == 0
    r = exmailctl(config, "domain", "remove", "example.test", "--with-accounts")
    # bob (live) and carol (removed before) are both in the recycle bin now.
    assert r.returncode == 0 and "2 account(s) in the recycle bin" in r.stdout, r.stdout
    assert "bob@example.test" in exmailctl(config, "recycle", "list").stdout


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "6 to 32"),
        ("A1" + "x" * 40, "6 to 32"),
        ("alllower1", "upper-case"),
        ("ALLUPPER1", "lower-case"),
        ("NoDigitsHere", "digit"),
        ("Carol1234", "account name"),
        ("xxCAROLxx1", "account name"),
        ("Password1", "too common"),
    ],
)
def test_password_policy(password: str, reason: str) -> None:
    with pytest.raises(WeakPassword, match=reason):
        check_policy(password, "carol@example.test")
    check_policy("Str0ngerPw", "carol@example.test")

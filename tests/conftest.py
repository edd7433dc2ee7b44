"""Shared fixtures: a real store on SQLite in a temp dir, and on PostgreSQL
when EXMAILD_TEST_DATABASE_URL is set (a fresh database per test session)."""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa

from exmaild.auth import passwords
from exmaild.config import AuthConfig, Config, DatabaseConfig, PathsConfig, load_config
from exmaild.mailstore.service import MailStore
from exmaild.store import model
from exmaild.store.connector import Store

PG_URL = os.environ.get("EXMAILD_TEST_DATABASE_URL", "")
# "postgresql": the PostgreSQL runs (store fixtures and daemons on a PostgreSQL
# URL) keep message contents in the database, so the whole suite can run
# against that backend too (docs/blobs.md).
PG_BLOBS = os.environ.get("EXMAILD_TEST_BLOBS_BACKEND", "") == "postgresql"
BACKENDS = ["sqlite", "postgresql"]
# The argon2id parameters of the test helpers' password hashes. Hashing new
# passwords with them too means a test's first login does not rehash with
# the production 64 MiB (which would cost every test a tenth of a second).
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


@pytest.fixture(autouse=True)
def _cheap_argon2() -> None:
    # Per test: an in-process exmailctl or daemon configures its own.
    passwords.configure(AuthConfig(**CHEAP_ARGON2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: all held open while choosing, so the kernel
    cannot hand one out twice (a daemon's listeners must not collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of our own for this test session."""
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set")
    name = f"exmaild_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    sa.create_engine(url).dispose()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _wipe_pg(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as c:
        tables = sa.inspect(c).get_table_names()
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            c.execute(sa.text(f"DROP TABLE {names} CASCADE"))
    eng.dispose()


@pytest.fixture(params=BACKENDS)
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    base = load_config(None)
    url = ""
    blobs = base.blobs
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        _wipe_pg(url)
        if PG_BLOBS:
            blobs = dataclasses.replace(blobs, backend="postgresql")
    return dataclasses.replace(
        base,
        paths=PathsConfig(data=str(tmp_path / "var")),
        database=DatabaseConfig(url=url, pool_size=4),
        blobs=blobs,
        base_dir=str(tmp_path),
    )


@pytest.fixture
def sqlite_cfg(tmp_path: Path) -> Config:
    return dataclasses.replace(
        load_config(None), paths=PathsConfig(data=str(tmp_path / "var")), base_dir=str(tmp_path)
    )


@pytest_twisted.async_yield_fixture
async def store(cfg: Config) -> AsyncIterator[MailStore]:
    from twisted.internet import reactor

    s = MailStore(cfg, reactor)
    s.open()
    s.startService()
    yield s
    s.stopService()


def table_count(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


__all__ = ["free_port", "model", "table_count"]

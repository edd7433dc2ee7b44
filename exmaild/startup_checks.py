"""Checks run before the daemon or exmailctl creates or binds anything.

Each failure is a StartupError with one line that names the key or the
command that fixes it. They run before the data directory, the SQLite file,
the log files or the self-signed certificate are made, so a failed start
leaves nothing half-created behind.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from exmaild.config import Config
from exmaild.errors import StartupError

CONNECT_TIMEOUT = 10  # seconds; an unreachable host must not hang a start


def safe_url(url: str) -> str:
    """The database URL without its password."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(cfg: Config) -> Path | None:
    """The SQLite file of the configured database (None: not SQLite, or in memory)."""
    url = make_url(cfg.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def check_driver(cfg: Config) -> None:
    url = make_url(cfg.database_url)
    try:
        url.get_dialect().import_dbapi()
    except ImportError as e:
        if url.get_backend_name() == "postgresql":
            raise StartupError(
                f"database.url is PostgreSQL but its driver is not installed ({e.name or e}): "
                "pip install '.[postgres]' (the psycopg driver, URL postgresql+psycopg://...)"
            ) from None
        raise StartupError(f"database.url: driver not installed: {e}") from None


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: Path, key: str) -> None:
    """`path` exists as a writable directory, or could be made."""
    if path.exists():
        if not path.is_dir():
            raise StartupError(f"{key}: {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StartupError(f"{key}: {path} is not writable by {_user()}")
        return
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise StartupError(f"{key}: cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(
            f"{key}: cannot create {path}: {parent} is not writable by {_user()} "
            "(create the directory and give it to that user)"
        )


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


_NO_DATABASE = re.compile(r'database "([^"]+)" does not exist')


def database_state(cfg: Config) -> str:
    """"missing" (no SQLite file, or no exmaild tables) or "present"; raises
    StartupError when the database server cannot be used at all."""
    path = sqlite_path(cfg)
    if path is not None:
        return "present" if path.exists() else "missing"
    if not cfg.database_url.startswith("postgresql"):
        return "present"
    url = cfg.database_url
    engine = sa.create_engine(url, poolclass=NullPool,
                              connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        with engine.connect() as conn:
            return "present" if sa.inspect(conn).has_table("alembic_version") else "missing"
    except sa.exc.DBAPIError as e:
        text = str(e.orig or e).strip()
        m = _NO_DATABASE.search(text)
        u = make_url(url)
        if m:
            owner = f" -O {u.username}" if u.username else ""
            raise StartupError(
                f"database {m.group(1)} does not exist on {u.host or 'localhost'}: create it "
                f"(e.g. `createdb{owner} {m.group(1)}` as the postgres user), then try again"
            ) from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        raise StartupError(f"cannot connect to database {safe_url(url)}: {first}") from None
    finally:
        engine.dispose()


def check_database(cfg: Config, *, create: bool) -> str:
    """The driver is there and the database reachable; returns database_state().

    `create=False` (a command that only reads) refuses a missing database
    instead of creating an empty one.
    """
    check_driver(cfg)
    state = database_state(cfg)
    path = sqlite_path(cfg)
    if state == "missing" and not create:
        where = str(path) if path is not None else safe_url(cfg.database_url)
        config = cfg.source or "none found, embedded defaults"
        raise StartupError(
            f"no exmaild database at {where} (config: {config}); give the daemon's config "
            "with --config or $EXMAILD_CONFIG, or create it with `exmailctl db upgrade`"
        )
    if path is not None and state == "missing":
        check_writable_dir(path.parent, "paths.data")
    return state


def check_tls(cfg: Config) -> None:
    """A configured certificate and key are readable PEM; so is every pair in
    the SNI directory."""
    if cfg.tls.sni_dir:
        from exmaild.tlscontext import load_sni_dir

        try:
            load_sni_dir(cfg.resolve(cfg.tls.sni_dir))
        except (OSError, ValueError, TypeError) as e:
            raise StartupError(f"tls.sni_dir: {e}") from None
    if not cfg.tls.cert:
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for key in ("cert", "key"):
        path = cfg.resolve(getattr(cfg.tls, key))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StartupError(f"tls.{key}: cannot read {path}: {e.strerror}") from None
        try:
            if key == "cert":
                x509.load_pem_x509_certificates(data)
            else:
                serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            what = "certificate" if key == "cert" else "private key (unencrypted)"
            raise StartupError(f"tls.{key}: {path} is not a PEM {what}") from None


def listen_keys(cfg: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg.listen)]


def check_ports(cfg: Config) -> None:
    """Every listener's address can be bound now (names the key if not)."""
    seen: dict[tuple[str, int], str] = {}
    for svc in listen_keys(cfg):
        addr = cfg.listen_address(svc)
        if addr is None:
            continue
        host, port = addr
        if port and addr in seen:
            raise StartupError(f"listen.{svc}: {host}:{port} is also listen.{seen[addr]}")
        seen[addr] = svc
        _try_bind(f"listen.{svc}", host, port)


def _try_bind(key: str, host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(f"{key}: cannot resolve {host}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's listening ports do, so a port in TIME_WAIT is not "busy".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(sockaddr)
    except OSError as e:
        raise StartupError(bind_error(key, host, port, e)) from None
    finally:
        s.close()


def bind_error(key: str, host: str, port: int, e: OSError) -> str:
    """The one line for a listening address that cannot be bound."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        msg = f"{where} is already in use by another program; set another [listen] port"
    elif e.errno == errno.EACCES:
        msg = (f"no permission to bind {where} (ports below 1024 need root or "
               "CAP_NET_BIND_SERVICE, see the README's production section)")
    elif e.errno == errno.EADDRNOTAVAIL:
        msg = f"{host} is not an address of this machine"
    else:
        msg = f"cannot bind {where}: {e.strerror}"
    return f"{key}: {msg}"


def check_daemon(cfg: Config) -> str:
    """Everything the daemon needs before it creates files or binds ports;
    returns the database state ("missing": the daemon will create it)."""
    check_driver(cfg)
    check_tls(cfg)
    check_ports(cfg)
    check_writable_dir(cfg.data_dir, "paths.data")
    if cfg.log.file:
        check_writable_dir(cfg.resolve(cfg.log.file).parent, "log.file")
    return check_database(cfg, create=True)

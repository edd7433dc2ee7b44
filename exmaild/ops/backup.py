"""Online backup, verification and restore of a store: database plus blob segments.

A backup is a directory:

    manifest.json       written last; a directory without it is an unfinished backup
    exmaild.sqlite      SQLite: a copy made with SQLite's online backup API
    database.pgdump     PostgreSQL: `pg_dump -Fc` of the same snapshot (if pg_dump exists)
    contents.tsv        PostgreSQL: digest, segment, offset, size of every stored body
    blobs/*.seg         each segment the snapshot references, up to its last referenced byte
                        (contents held in the database, segment "@db", are in the dump)

Why this is consistent while the daemon runs: the database copy is one
snapshot (SQLite's backup in one step is one read transaction, which in WAL
mode blocks no writer; PostgreSQL's is an exported REPEATABLE READ snapshot
that pg_dump shares). Segments are append-only and a body's bytes are
fdatasync'd before the row pointing at them commits, so every byte the
snapshot references is already in its segment, and appends made after the
snapshot lie beyond the prefix copied. The one thing that changes old bytes is
compaction, which removes a segment once its live blobs are moved: a segment
the snapshot references may vanish before it is opened. Then the whole
snapshot is taken again (the new one references the moved copies); a segment
that is open when compaction unlinks it is still read in full.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from exmaild.config import Config
from exmaild.store import schema
from exmaild.store.dbblobs import DB_SEGMENT

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "exmaild.sqlite"
PG_DUMP_FILE = "database.pgdump"
CONTENTS_FILE = "contents.tsv"
BLOBS = "blobs"
ATTEMPTS = 5
CHUNK = 1024 * 1024

Say = Callable[[str], None]


class BackupError(Exception):
    """A backup, verify or restore that cannot go on; the message is for the operator."""


class _Vanished(Exception):
    """A referenced segment was removed (by compaction) before it was opened."""


@dataclass
class VerifyReport:
    files: int = 0
    bytes: int = 0
    blobs: int = 0
    problems: list[str] = field(default_factory=list)


# -- helpers -------------------------------------------------------------------------
def _sqlite_path(cfg: Config) -> Path | None:
    url = sa.engine.make_url(cfg.database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(url.database)


def _libpq(cfg: Config) -> tuple[str, dict[str, str]]:
    """A libpq connection string for pg_dump/pg_restore, with the password in
    the environment rather than on the command line (visible in ps)."""
    url = sa.engine.make_url(cfg.database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _copy_prefix(src: Path, dst: Path, length: int) -> str:
    """Copy the first `length` bytes of `src` to a new file `dst`, durably;
    returns their sha256. _Vanished if `src` is gone."""
    try:
        fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        raise _Vanished(src.name) from None
    h = hashlib.sha256()
    try:
        if os.fstat(fd).st_size < length:
            raise BackupError(f"segment {src} is shorter than the database says ({length} bytes)")
        with open(dst, "xb") as out:
            done = 0
            while done < length:
                chunk = os.pread(fd, min(CHUNK, length - done), done)
                if not chunk:
                    raise BackupError(f"segment {src} ended early at {done} bytes")
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(fd)
    return h.hexdigest()


def _check_new_dir(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory: give a new one")


def _clear(dest: Path) -> None:
    for p in dest.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# -- backup --------------------------------------------------------------------------
@dataclass
class _Snapshot:
    database: str  # "sqlite" | "postgresql"
    revision: str | None
    segments: dict[str, int]  # name -> bytes referenced (max offset + size)
    database_file: str | None
    notes: list[str] = field(default_factory=list)


def _snapshot_sqlite(db: Path, dest: Path) -> _Snapshot:
    if not db.is_file():
        raise BackupError(f"no database at {db}")
    # mode=rw: never create a database where there was none.
    src = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
    out = dest / SQLITE_FILE
    dst = sqlite3.connect(out)
    try:
        # pages=-1: the whole database in one step, i.e. in one read
        # transaction, so the copy is one snapshot; in WAL mode the daemon's
        # writers go on meanwhile.
        src.backup(dst, pages=-1)
        # A self-contained file: no -wal beside it.
        dst.execute("PRAGMA journal_mode=DELETE")
        revision = dst.execute("SELECT version_num FROM alembic_version").fetchone()
        segments = {
            seg: int(end)
            for seg, end in dst.execute(
                'SELECT segment, MAX("offset" + size) FROM contents GROUP BY segment'
            )
            if seg != DB_SEGMENT
        }
    finally:
        dst.close()
        src.close()
    return _Snapshot("sqlite", revision[0] if revision else None, segments, SQLITE_FILE)


@contextlib.contextmanager
def _pg_snapshot(cfg: Config) -> Iterator[tuple[sa.Connection, str]]:
    """A REPEATABLE READ transaction and its exported snapshot id, held open."""
    engine = sa.create_engine(cfg.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                snap = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                yield conn, snap
    finally:
        engine.dispose()


def _snapshot_pg(cfg: Config, dest: Path, say: Say) -> _Snapshot:
    pg_dump = shutil.which("pg_dump")
    with _pg_snapshot(cfg) as (conn, snap):
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        segments: dict[str, int] = {}
        # The body index, so `backup verify` can check every body without the database.
        with open(dest / CONTENTS_FILE, "x", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            rows = conn.exec_driver_sql(
                'SELECT digest, segment, "offset", size FROM contents ORDER BY id'
            )
            for dg, seg, off, size in rows:
                w.writerow((dg, seg, off, size))
                if seg != DB_SEGMENT:  # else its bytes are in the dump
                    segments[seg] = max(segments.get(seg, 0), int(off) + int(size))
            f.flush()
            os.fsync(f.fileno())
        notes: list[str] = []
        database_file = None
        if pg_dump:
            conninfo, env = _libpq(cfg)
            proc = subprocess.run(
                [pg_dump, "--format=custom", f"--snapshot={snap}", "--no-owner",
                 f"--file={dest / PG_DUMP_FILE}", f"--dbname={conninfo}"],
                env=env, capture_output=True, text=True,
            )
            if proc.returncode:
                raise BackupError(f"pg_dump failed: {_last_line(proc.stderr)}")
            database_file = PG_DUMP_FILE
        else:
            notes.append(
                "pg_dump is not installed: this backup holds the blobs only. Install the "
                "PostgreSQL client (the server's major version) and back up again, or see "
                "docs/backup.md for taking the dump yourself."
            )
            say("exmailctl: warning: " + notes[-1])
    return _Snapshot("postgresql", revision, segments, database_file, notes)


def backup(cfg: Config, dest: Path, say: Say = print,
           before_copy: Callable[[], None] | None = None) -> dict[str, Any]:
    """Back up the store of `cfg` into the new directory `dest`; returns the manifest.

    `before_copy` runs between the snapshot and the segment copy (tests run a
    compaction there)."""
    _check_new_dir(dest)
    sqlite_db = _sqlite_path(cfg)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _backup_into(cfg, dest, sqlite_db, say, before_copy)
    except BaseException:
        # Nothing half-made stays behind (it would look like a backup).
        shutil.rmtree(dest, ignore_errors=True) if created else _clear(dest)
        raise


def _backup_into(cfg: Config, dest: Path, sqlite_db: Path | None, say: Say,
                 before_copy: Callable[[], None] | None) -> dict[str, Any]:
    blobs = cfg.data_dir / BLOBS
    for attempt in range(1, ATTEMPTS + 1):
        (dest / BLOBS).mkdir()
        snap = (_snapshot_sqlite(sqlite_db, dest) if sqlite_db is not None
                else _snapshot_pg(cfg, dest, say))
        files: dict[str, dict[str, Any]] = {}
        if before_copy is not None:
            before_copy()
        try:
            for name, length in sorted(snap.segments.items()):
                rel = f"{BLOBS}/{name}.seg"
                digest = _copy_prefix(blobs / f"{name}.seg", dest / rel, length)
                files[rel] = {"size": length, "sha256": digest}
        except _Vanished as e:
            say(f"exmailctl: segment {e} was compacted away during the copy; "
                f"taking a new snapshot (attempt {attempt + 1} of {ATTEMPTS})")
            _clear(dest)
            continue
        break
    else:
        raise BackupError(f"segments kept vanishing under compaction ({ATTEMPTS} attempts)")
    _fsync_dir(dest / BLOBS)
    for rel in (snap.database_file, CONTENTS_FILE if sqlite_db is None else None):
        if rel:
            size, digest = _sha256_file(dest / rel)
            files[rel] = {"size": size, "sha256": digest}
    manifest = {
        "format": FORMAT,
        "version": _version(),
        "created": int(time.time()),
        "database": snap.database,
        "database_file": snap.database_file,
        "schema_revision": snap.revision,
        "node_id": cfg.server.node_id,
        "segments": snap.segments,
        "files": files,
        "notes": snap.notes,
    }
    tmp = dest / (MANIFEST + ".tmp")
    with open(tmp, "x") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(dest / MANIFEST)
    _fsync_dir(dest)
    return manifest


def _known_revisions() -> set[str]:
    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(schema.migrations_dir()))
    return {s.revision for s in ScriptDirectory.from_config(acfg).walk_revisions()}


def _version() -> str:
    from exmaild import __version__

    return __version__


# -- verify --------------------------------------------------------------------------
def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{src} holds no {MANIFEST}: not a backup, or an unfinished one"
        ) from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{src / MANIFEST}: unreadable ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: backup format {manifest.get('format')!r} is not {FORMAT}")
    return manifest


def _content_rows(src: Path, manifest: dict[str, Any]) -> Iterator[tuple[str, str, int, int]]:
    """(digest, segment, offset, size) of every stored body in the backup."""
    if manifest["database"] == "sqlite":
        db = sqlite3.connect(f"file:{src / SQLITE_FILE}?mode=ro", uri=True)
        try:
            yield from db.execute(
                'SELECT digest, segment, "offset", size FROM contents ORDER BY segment, "offset"'
            )
        finally:
            db.close()
    elif (src / CONTENTS_FILE).is_file():  # else reported missing already
        with open(src / CONTENTS_FILE, newline="") as f:
            for dg, seg, off, size in csv.reader(f, delimiter="\t"):
                yield dg, seg, int(off), int(size)


def verify(src: Path) -> VerifyReport:
    """Re-check every file's size and sha256, that every stored body lies
    within the copied segments, and that its bytes hash to its digest."""
    manifest = read_manifest(src)
    rep = VerifyReport()
    for rel, want in sorted(manifest["files"].items()):
        path = src / rel
        if not path.is_file():
            rep.problems.append(f"{rel}: missing")
            continue
        size, digest = _sha256_file(path)
        rep.files += 1
        rep.bytes += size
        if size != want["size"]:
            rep.problems.append(f"{rel}: {size} bytes, the manifest says {want['size']}")
        elif digest != want["sha256"]:
            rep.problems.append(f"{rel}: checksum mismatch")
    if manifest["database"] == "sqlite":
        try:
            db = sqlite3.connect(f"file:{src / SQLITE_FILE}?mode=ro", uri=True)
            try:
                ok = db.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                db.close()
            if ok != "ok":
                rep.problems.append(f"{SQLITE_FILE}: {ok}")
        except sqlite3.DatabaseError as e:
            rep.problems.append(f"{SQLITE_FILE}: {e}")
            return rep
    lengths = {  # what is there: a cut file leaves bodies outside it
        Path(rel).stem: (src / rel).stat().st_size
        for rel in manifest["files"] if rel.startswith(BLOBS + "/") and (src / rel).is_file()
    }
    fds: dict[str, int] = {}
    try:
        for dg, seg, off, size in _content_rows(src, manifest):
            if seg == DB_SEGMENT:
                continue  # held in the database dump: pg_restore checks it
            rep.blobs += 1
            if seg not in lengths or off + size > lengths[seg]:
                rep.problems.append(
                    f"body {dg[:16]}: {seg} [{off}, {off + size}) not in the backup"
                )
                continue
            if seg not in fds:
                try:
                    fds[seg] = os.open(src / BLOBS / f"{seg}.seg", os.O_RDONLY)
                except FileNotFoundError:
                    continue  # reported above as missing
            h = hashlib.sha256()
            done = 0
            while done < size:
                chunk = os.pread(fds[seg], min(CHUNK, size - done), off + done)
                if not chunk:
                    break
                h.update(chunk)
                done += len(chunk)
            if h.hexdigest() != dg:
                rep.problems.append(f"body {dg[:16]}: its bytes in {seg} do not match its digest")
    except sqlite3.DatabaseError as e:
        rep.problems.append(f"{SQLITE_FILE}: {e}")
    finally:
        for fd in fds.values():
            os.close(fd)
    return rep


# -- restore -------------------------------------------------------------------------
def restore(cfg: Config, src: Path, say: Say = print) -> dict[str, Any]:
    """Restore the backup `src` into `cfg`'s empty database and data folder."""
    manifest = read_manifest(src)
    rep = verify(src)
    if rep.problems:
        raise BackupError(f"{src} fails verification ({rep.problems[0]}); nothing restored")
    data = cfg.data_dir
    if data.exists() and any(data.iterdir()):
        raise BackupError(f"data folder {data} is not empty: restore needs an empty one")
    sqlite_db = _sqlite_path(cfg)
    if (sqlite_db is None) != (manifest["database"] == "postgresql"):
        raise BackupError(
            f"this is a {manifest['database']} backup; the configuration's database is "
            f"{'SQLite' if sqlite_db is not None else 'PostgreSQL'}"
        )
    revision = manifest.get("schema_revision")
    known = _known_revisions()
    if revision not in known:
        raise BackupError(f"the backup's schema revision {revision} is unknown to this exmaild")
    if sqlite_db is not None:
        if sqlite_db.exists() and sqlite_db.stat().st_size:
            raise BackupError(f"database {sqlite_db} exists: restore needs an empty one")
    else:
        engine = sa.create_engine(cfg.database_url, poolclass=sa.pool.NullPool)
        try:
            empty = schema.is_empty(engine)
        finally:
            engine.dispose()
        if manifest["database_file"] and not empty:
            raise BackupError("the configured PostgreSQL database is not empty: "
                              "restore needs an empty one")
        if not manifest["database_file"] and empty:
            raise BackupError("this backup holds the blobs only: pg_restore your own dump "
                              "into the configured database first (docs/backup.md)")
        if manifest["database_file"] and not shutil.which("pg_restore"):
            raise BackupError("pg_restore is not installed (install the PostgreSQL client)")
    created = not data.exists()
    try:
        _restore_into(cfg, src, manifest, sqlite_db)
    except BaseException:
        # Leave the data folder as empty as it was, so restore can run again.
        if data.exists():
            shutil.rmtree(data, ignore_errors=True) if created else _clear(data)
        if sqlite_db is not None:
            sqlite_db.with_name(sqlite_db.name + ".restoring").unlink(missing_ok=True)
        raise
    if revision != schema.head_revision():
        say(f"exmailctl: the backup's schema is at {revision}; run `exmailctl db upgrade` "
            "before starting the daemon")
    return manifest


def _restore_into(cfg: Config, src: Path, manifest: dict[str, Any],
                  sqlite_db: Path | None) -> None:
    data = cfg.data_dir
    data.mkdir(parents=True, exist_ok=True)
    blobs = data / BLOBS
    blobs.mkdir()
    for rel in manifest["files"]:
        if rel.startswith(BLOBS + "/"):
            _copy_prefix(src / rel, blobs / Path(rel).name, manifest["files"][rel]["size"])
    _fsync_dir(blobs)
    if sqlite_db is not None:
        sqlite_db.parent.mkdir(parents=True, exist_ok=True)
        tmp = sqlite_db.with_name(sqlite_db.name + ".restoring")
        _copy_prefix(src / SQLITE_FILE, tmp, (src / SQLITE_FILE).stat().st_size)
        tmp.rename(sqlite_db)
        _fsync_dir(sqlite_db.parent)
    elif manifest["database_file"]:
        conninfo, env = _libpq(cfg)
        proc = subprocess.run(
            ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
             f"--dbname={conninfo}", str(src / manifest["database_file"])],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode:
            raise BackupError(f"pg_restore failed: {_last_line(proc.stderr)}")

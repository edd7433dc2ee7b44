"""exmailctl commands for operators: backup, backup verify, restore, import, export.

`cli.build_parser` calls `add_parsers`, which adds the parsers and returns
the handlers that run on the opened store (import, export). Backup, verify
and restore must not open the store (restore needs an empty database, which
opening would fill with a schema): `run_plain` runs those on the config alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from exmaild.config import Config
from exmaild.ops import backup as bk
from exmaild.ops import mailio

StoreHandler = Callable[[Any, argparse.Namespace], Awaitable[int]]
_STORE: dict[tuple[str, str], StoreHandler] = {}


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(f"exmailctl: {line}\n")


def add_parsers(sub: Any) -> dict[tuple[str, str], StoreHandler]:
    bp = sub.add_parser(
        "backup", help="online backup of database and blobs",
        usage="exmailctl backup DEST | exmailctl backup verify DEST",
        description="`backup DEST` backs up into DEST, a new directory, while the daemon "
                    "runs; `backup verify DEST` re-checks a backup's checksums and blobs.",
    )
    bp.add_argument("words", nargs="+", metavar="[verify] DEST")
    bp.set_defaults(cmd="backup")
    rp = sub.add_parser("restore", help="restore a backup into this config's empty store")
    rp.add_argument("src", metavar="SRC")
    rp.set_defaults(cmd="restore")

    ip = sub.add_parser("import", help="import a mailbox (Maildir++ tree, mbox file)")
    ip = ip.add_subparsers(dest="cmd", required=True)
    md = ip.add_parser("maildir", help="a Dovecot Maildir++ tree with its folders")
    md.add_argument("address")
    md.add_argument("path")
    mb = ip.add_parser("mbox", help="one mbox file into one folder")
    mb.add_argument("address")
    mb.add_argument("file")
    mb.add_argument("--folder", default="INBOX", help="target folder (default: INBOX)")

    ep = sub.add_parser("export", help="export an account's folders")
    ep.add_argument("address")
    ep.add_argument("dest", metavar="DEST", help="a new directory")
    ep.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    ep.set_defaults(cmd="export")
    return dict(_STORE)


def run_plain(cfg: Config, args: argparse.Namespace) -> int | None:
    """Run backup/verify/restore; None for any other command."""
    if args.group not in ("backup", "restore"):
        return None
    try:
        if args.group == "restore":
            return _restore(cfg, Path(args.src))
        words = args.words
        if len(words) == 2 and words[0] == "verify":
            return _verify(Path(words[1]))
        if len(words) != 1 or words[0] == "verify":  # a folder named so: ./verify
            _err("usage: exmailctl backup DEST | exmailctl backup verify DEST")
            return 2
        return _backup(cfg, Path(words[0]))
    except bk.BackupError as e:
        _err(str(e))
        return 1
    except OSError as e:
        _err(f"{e.filename or ''}: {e.strerror}" if e.strerror else str(e))
        return 1


def _backup(cfg: Config, dest: Path) -> int:
    manifest = bk.backup(cfg, dest, say=_err)
    files = manifest["files"]
    size = sum(f["size"] for f in files.values())
    _out(f"backup of {manifest['database']} store in {dest}: {len(files)} file(s), "
         f"{size} bytes, schema {manifest['schema_revision']}")
    if manifest["database"] == "postgresql" and not manifest["database_file"]:
        _out("the database itself is not in it: see docs/backup.md (pg_dump)")
    return 0


def _verify(src: Path) -> int:
    rep = bk.verify(src)
    for p in rep.problems:
        _out(f"FAILED {p}")
    if rep.problems:
        _err(f"{src}: {len(rep.problems)} problem(s)")
        return 1
    _out(f"{src}: OK, {rep.files} file(s), {rep.bytes} bytes, {rep.blobs} message bodies checked")
    return 0


def _restore(cfg: Config, src: Path) -> int:
    manifest = bk.restore(cfg, src, say=_err)
    _out(f"restored {src} ({manifest['database']}, schema {manifest['schema_revision']}) "
         f"into {cfg.data_dir}")
    return 0


# -- on the opened store -------------------------------------------------------------
def _command(group: str, name: str) -> Callable[[StoreHandler], StoreHandler]:
    def deco(fn: StoreHandler) -> StoreHandler:
        _STORE[(group, name)] = fn
        return fn

    return deco


def _ingestor(store: Any) -> Any:
    found = getattr(store, "ingestor", None)
    if found is not None:
        return found
    from exmaild.mailstore.service import make_ingestor

    ingestor = make_ingestor(store.cfg, store)
    # Not spooler.open(): that empties the directory a running daemon uses too.
    ingestor.spooler.directory.mkdir(parents=True, exist_ok=True)
    return ingestor


async def _guard(work: Awaitable[Any]) -> int:
    try:
        await work
    except mailio.MailIOError as e:
        _err(str(e))
        return 1
    return 0


@_command("import", "maildir")
async def import_maildir(store: Any, a: argparse.Namespace) -> int:
    return await _guard(
        mailio.import_maildir(store, _ingestor(store), a.address, Path(a.path), _out)
    )


@_command("import", "mbox")
async def import_mbox(store: Any, a: argparse.Namespace) -> int:
    return await _guard(
        mailio.import_mbox(store, _ingestor(store), a.address, Path(a.file), a.folder, _out)
    )


@_command("export", "export")
async def export(store: Any, a: argparse.Namespace) -> int:
    return await _guard(mailio.export(store, a.address, Path(a.dest), a.format, _out))

"""Mailbox import (Maildir++, mbox) and export, through the one ingest path.

Import places every message with the Ingestor, as SMTP and APPEND do, with
its flags, keywords and internal date. It is idempotent: before a folder is
filled, the digests of the messages already in it are counted, and a source
message whose digest is there already is skipped (as many times as it is
there), so running the same import again adds nothing, and an interrupted
one picks up where it stopped. Folders are created as IMAP CREATE creates
them: a localised system-folder name ("Trash", "Sent Items") is the system
folder, missing parents are created, and names IMAP would refuse are skipped.
Quota is not checked: the administrator moves mail that the account owns.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer

from exmaild.mailstore.ingest import SECOND_BATCH_MIN, Ingestor, IngestRequest, Target
from exmaild.ops import maildir, mbox
from exmaild.ops.progress import Progress
from exmaild.protocols.imap import folders as imapnames
from exmaild.store import imapfolders
from exmaild.store import model as m
from exmaild.store.connector import Store
from exmaild.store.records import Account, Mailbox

# Messages handed to the Ingestor at once. Up to SECOND_BATCH_MIN, only one of
# them is committed in a batch at a time, so they get UIDs in source order.
WINDOW = SECOND_BATCH_MIN
WINDOW_BYTES = 16 * 1024 * 1024

Say = Callable[[str], None]


class MailIOError(Exception):
    """An import or export that cannot go on; the message is for the operator."""


@dataclass
class FolderStats:
    name: str
    imported: int = 0
    present: int = 0  # already in the folder (an earlier run)
    too_large: int = 0


@dataclass
class ImportStats:
    folders: list[FolderStats] = field(default_factory=list)
    skipped_folders: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return sum(f.imported for f in self.folders)

    @property
    def present(self) -> int:
        return sum(f.present for f in self.folders)

    @property
    def too_large(self) -> int:
        return sum(f.too_large for f in self.folders)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Importer:
    """Fills folders of one account; one instance per import run."""

    def __init__(self, store: Store, ingestor: Ingestor, account: Account) -> None:
        self.store = store
        self.ingestor = ingestor
        self.account = account
        self.limit = store.cfg.limits.message_size

    async def folder(self, source_name: str) -> Mailbox | None:
        """The account's folder for a source folder name, created if missing;
        None for a name IMAP CREATE would refuse."""
        name = "INBOX" if source_name.upper() == "INBOX" else imapnames.canonical(source_name)
        aid = self.account.id
        box = await self.store.mailboxes.get(aid, name)
        if box is not None:
            return box
        if imapnames.is_system(name) or imapnames.check_new_name(name):
            return None

        def create(conn: sa.Connection) -> None:
            try:
                imapfolders.create(conn, aid, name)
            except imapfolders.FolderExists:
                pass  # created meanwhile (an IMAP client of the same account)

        await self.store.pool.transaction(create)
        return await self.store.mailboxes.get(aid, name)

    async def present(self, mailbox_id: int) -> Counter[str]:
        def thd(conn: sa.Connection) -> Counter[str]:
            rows = conn.execute(
                sa.select(m.contents.c.digest)
                .join(m.messages, m.messages.c.content_id == m.contents.c.id)
                .where(m.messages.c.mailbox_id == mailbox_id)
            )
            return Counter(r[0] for r in rows)

        return await self.store.pool.do(thd)

    async def fill(
        self, box: Mailbox, items: Iterable[tuple[bytes | None, int, tuple[str, ...], int | None]],
        stats: FolderStats, progress: Progress,
    ) -> None:
        """Ingest (raw, flags, keywords, internal date) items not already in `box`;
        raw None means too large."""
        have = await self.present(box.id)
        window: list[IngestRequest] = []
        held = 0

        async def flush() -> None:
            nonlocal window, held
            if not window:
                return
            try:
                results = await defer.gatherResults(
                    [defer.Deferred.fromCoroutine(self.ingestor.ingest(r)) for r in window],
                    consumeErrors=True,
                )
            except defer.FirstError as e:
                raise MailIOError(f"{box.name}: storing failed ({e.subFailure.value}); "
                                  "run the import again to go on") from None
            for res in results:
                if res.refused:
                    raise MailIOError(f"{box.name}: the store refused a message "
                                       f"({res.refused[0].reason})")
            stats.imported += len(window)
            progress.advance(len(window))
            window, held = [], 0

        for raw, mask, keywords, date in items:
            if raw is None:
                stats.too_large += 1
                progress.advance()
                continue
            if len(raw) > self.limit:
                stats.too_large += 1
                progress.advance()
                continue
            dg = _digest(raw)
            if have[dg] > 0:
                have[dg] -= 1
                stats.present += 1
                progress.advance()
                continue
            window.append(IngestRequest(
                raw, [Target(self.account.id, box.id, mask, keywords)],
                internal_date=date, check_quota=False,
            ))
            held += len(raw)
            if len(window) >= WINDOW or held >= WINDOW_BYTES:
                await flush()
        await flush()


async def _account(store: Store, address: str) -> Account:
    acct = await store.directory.get_account(address)
    if acct is None or acct.address != address.strip().lower():
        raise MailIOError(f"unknown account {address}")
    return acct


async def import_maildir(store: Store, ingestor: Ingestor, address: str, root: Path,
                         say: Say) -> ImportStats:
    acct = await _account(store, address)
    try:
        tree = maildir.folders(root)
    except (ValueError, OSError) as e:
        raise MailIOError(str(e)) from None
    imp = Importer(store, ingestor, acct)
    stats = ImportStats()
    for source_name, path in tree:
        msgs = maildir.messages(path)
        box = await imp.folder(source_name)
        if box is None:
            say(f"{source_name}: skipped, not a folder name exmaild accepts")
            stats.skipped_folders.append(source_name)
            continue
        fs = FolderStats(box.name)
        stats.folders.append(fs)
        progress = Progress(box.name, len(msgs))

        def items(msgs: list[maildir.MaildirMessage] = msgs) -> Iterable[Any]:
            for msg in msgs:
                raw = None if msg.path.stat().st_size > imp.limit else msg.read()
                yield raw, msg.flags, msg.keywords, msg.internal_date

        await imp.fill(box, items(), fs, progress)
        progress.finish()
        say(_summary(fs, source_name))
    return stats


async def import_mbox(store: Store, ingestor: Ingestor, address: str, path: Path,
                      folder: str, say: Say) -> ImportStats:
    acct = await _account(store, address)
    imp = Importer(store, ingestor, acct)
    box = await imp.folder(folder)
    if box is None:
        raise MailIOError(f"{folder!r} is not a folder name exmaild accepts")
    stats = ImportStats()
    fs = FolderStats(box.name)
    stats.folders.append(fs)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MailIOError(f"{path}: {e.strerror}") from None
    with f:
        progress = Progress(box.name, path.stat().st_size, unit="bytes")

        def items() -> Iterable[Any]:
            for msg in mbox.read(f, imp.limit):
                # The bar counts bytes of the file (fill() adds the last one).
                progress.done += msg.size - 1
                yield msg.raw, msg.flags, msg.keywords, msg.internal_date

        try:
            await imp.fill(box, items(), fs, progress)
        except ValueError as e:
            raise MailIOError(f"{path}: {e}") from None
        progress.done = progress.total
        progress.finish()
    say(_summary(fs, str(path)))
    return stats


def _summary(fs: FolderStats, source: str) -> str:
    text = f"{fs.name}: {fs.imported} imported, {fs.present} already there"
    if fs.too_large:
        text += f", {fs.too_large} larger than limits.message_size skipped"
    return text + f" (from {source})"


# -- export ----------------------------------------------------------------------------
@dataclass
class ExportStats:
    folders: int = 0
    messages: int = 0


def mbox_path(root: Path, name: str) -> Path:
    """``A/B`` -> ``root/A/B.mbox``; parts that would leave ``root`` are escaped."""
    parts = [p.replace("%", "%25") for p in name.split(imapnames.SEP)]
    parts = ["%2E" + p[1:] if p.startswith(".") else p for p in parts]
    return root.joinpath(*parts[:-1]) / (parts[-1] + ".mbox")


async def export(store: Store, address: str, dest: Path, fmt: str, say: Say) -> ExportStats:
    acct = await _account(store, address)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MailIOError(f"{dest} exists and is not an empty directory: give a new one")
    dest.mkdir(parents=True, exist_ok=True)
    stats = ExportStats()
    boxes = sorted(await store.mailboxes.list(acct.id), key=lambda b: (b.name != "INBOX", b.name))
    hostname = store.cfg.server.hostname
    for box in boxes:
        entries = await store.mailboxes.messages([box.id])
        progress = Progress(box.name, len(entries))
        stats.folders += 1
        if fmt == "maildir":
            w = maildir.MaildirWriter(dest, box.name, hostname, box.uidvalidity)
            for e in entries:
                raw = await store.read_message(e.content_id)
                await store.pool.call(w.add, e.uid, raw, e.flags, e.keywords.split(),
                                      e.internal_date)
                progress.advance()
            w.close(box.uidnext)
            if w.dropped_keywords:
                say(f"{box.name}: more than 26 keywords; not exported: "
                    + " ".join(sorted(w.dropped_keywords)))
        else:
            path = mbox_path(dest, box.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as f:
                for e in entries:
                    raw = await store.read_message(e.content_id)
                    mbox.write(f, raw, e.flags, e.keywords.split(), e.internal_date)
                    progress.advance()
        stats.messages += len(entries)
        progress.finish()
        say(f"{box.name}: {len(entries)} message(s) exported")
    return stats

"""A recycled account's mail as one zip of mbox files, before it is purged
(manual §4.4.2.5: "export its mail").

One `FOLDER.mbox` (mboxrd, flags in Status/X-Status/X-Keywords, as
`exmailctl export --format mbox` writes them) per folder, `INBOX.mbox`
first, nested folders as zip directories. The zip is written to a temporary
name next to the destination, fsynced, and renamed into place only when
complete, so a file at the destination is always a whole export; nothing in
the store changes.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from exmaild.ops import mbox
from exmaild.ops.mailio import mbox_path


@dataclass
class ZipStats:
    folders: int = 0
    messages: int = 0


async def export_zip(store: Any, account_id: int, dest: Path) -> ZipStats:
    if dest.exists():
        raise FileExistsError(f"{dest} exists: give a new file name")
    boxes = sorted(await store.mailboxes.list(account_id),
                   key=lambda b: (b.name != "INBOX", b.name))
    tmp = dest.with_name(f".{dest.name}.part")
    stats = ZipStats()
    try:
        with open(tmp, "wb") as raw, zipfile.ZipFile(
                raw, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for box in boxes:
                name = str(PurePosixPath(*mbox_path(Path("."), box.name).parts))
                entries = await store.mailboxes.messages([box.id])
                with zf.open(name, "w", force_zip64=True) as f:
                    for e in entries:
                        msg = await store.read_message(e.content_id)
                        mbox.write(f, msg, e.flags, e.keywords.split(), e.internal_date)
                stats.folders += 1
                stats.messages += len(entries)
            zf.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return stats

"""Dovecot Maildir++ trees: reading one for import, writing one for export.

Layout (Dovecot's default `maildir:` with the Maildir++ layout): INBOX is
`cur/` + `new/` at the root; a folder `A/B` is the directory `.A.B`, its name
in modified UTF-7. A message file is `<base>:2,<info>` where the info letters
are the system flags (D draft, F flagged, R answered, S seen, T deleted) and
`a`..`z` keywords numbered in the folder's `dovecot-keywords` file. Dovecot
stores mail with LF line ends and serves it with CRLF; the import does the
same conversion, and the export writes LF. The internal date is the file's
mtime. `dovecot-uidlist`, if present, gives the order (by UID) to import in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import twisted.mail.imap4  # noqa: F401  (registers the "imap4-utf-7" codec)

from exmaild.store import flags as fl

SEP = "/"
_INFO_FLAGS = {"D": fl.DRAFT, "F": fl.FLAGGED, "R": fl.ANSWERED, "S": fl.SEEN, "T": fl.DELETED}
_FLAG_LETTERS = sorted((bit, letter) for letter, bit in _INFO_FLAGS.items())
_BASE = re.compile(r"^(?P<base>[^:]+)(?::2,(?P<info>[A-Za-z]*))?$")
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class MaildirMessage:
    path: Path
    flags: int
    keywords: tuple[str, ...]
    internal_date: int

    def read(self) -> bytes:
        return to_crlf(self.path.read_bytes())


def to_crlf(data: bytes) -> bytes:
    """Bare LF line ends to CRLF (CRLF ones stay), as Dovecot serves a Maildir file."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# -- reading ---------------------------------------------------------------------------
def folder_name(dirname: str) -> str:
    """``.A.B`` -> ``A/B`` (modified UTF-7 decoded)."""
    return SEP.join(_decode_part(p) for p in dirname[1:].split("."))


def _decode_part(part: str) -> str:
    # Dovecot writes modified UTF-7; a UTF-8 name (its "UTF-8" layout option)
    # or one that is not valid modified UTF-7 is taken literally.
    if not part.isascii():
        return part
    try:
        return part.encode("ascii").decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        return part


def folders(root: Path) -> list[tuple[str, Path]]:
    """(folder name, directory) of every mail folder in the tree, INBOX first."""
    if not (root / "cur").is_dir() and not (root / "new").is_dir():
        raise ValueError(f"{root} is not a Maildir (no cur/ or new/)")
    out = [("INBOX", root)]
    subs = []
    for entry in os.scandir(root):
        if (entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir()
                and ((Path(entry.path) / "cur").is_dir() or (Path(entry.path) / "new").is_dir())):
            subs.append((folder_name(entry.name), Path(entry.path)))
    return out + sorted(subs)


def _keywords(folder: Path) -> dict[str, str]:
    """letter -> keyword from Dovecot's `dovecot-keywords` ("0 $Label1" lines)."""
    out: dict[str, str] = {}
    try:
        text = (folder / "dovecot-keywords").read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        num, _, name = line.partition(" ")
        if num.isdigit() and int(num) < len(KEYWORD_LETTERS) and name:
            out[KEYWORD_LETTERS[int(num)]] = name
    return out


def _uid_order(folder: Path) -> dict[str, int]:
    """base file name -> UID from `dovecot-uidlist`, if there is one."""
    out: dict[str, int] = {}
    try:
        lines = (folder / "dovecot-uidlist").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        colon = rest.find(":")
        if uid.isdigit() and colon >= 0:
            out[rest[colon + 1 :]] = int(uid)
    return out


def messages(folder: Path) -> list[MaildirMessage]:
    """The folder's messages in the order to import them (Dovecot's UID order,
    else by date and name)."""
    kw = _keywords(folder)
    order = _uid_order(folder)
    found: list[tuple[tuple[int, int, str], MaildirMessage]] = []
    for sub in ("cur", "new"):
        try:
            entries = list(os.scandir(folder / sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            m = _BASE.match(entry.name)
            base = m["base"] if m else entry.name
            info = (m["info"] or "") if m else ""
            mask = 0
            keywords: list[str] = []
            for ch in info:
                if ch in _INFO_FLAGS:
                    mask |= _INFO_FLAGS[ch]
                elif ch in kw and kw[ch] not in keywords:
                    keywords.append(kw[ch])
            mtime = int(entry.stat().st_mtime)
            msg = MaildirMessage(Path(entry.path), mask, tuple(keywords), mtime)
            uid = order.get(base)
            key = (0, uid, base) if uid is not None else (1, mtime, base)
            found.append((key, msg))
    found.sort(key=lambda x: x[0])
    return [msg for _, msg in found]


# -- writing ---------------------------------------------------------------------------
def folder_dir(root: Path, name: str) -> Path:
    """Where folder ``name`` goes in a Maildir++ tree (a "." inside a name is
    written as its modified UTF-7 form so it does not split the name)."""
    if name == "INBOX":
        return root
    parts = [p.encode("imap4-utf-7").decode("ascii").replace(".", "&AC4-")
             for p in name.split(SEP)]
    return root / ("." + ".".join(parts))


class MaildirWriter:
    """Writes one folder's messages; keywords get letters in order of appearance."""

    def __init__(self, root: Path, name: str, hostname: str, uidvalidity: int) -> None:
        self.dir = folder_dir(root, name)
        for sub in ("cur", "new", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if name != "INBOX":
            (self.dir / "maildirfolder").touch()
        self.hostname = hostname.replace("/", "\\057").replace(":", "\\072")
        self.uidvalidity = uidvalidity
        self.letters: dict[str, str] = {}
        self.uids: list[tuple[int, str]] = []
        self.dropped_keywords: set[str] = set()

    def add(self, uid: int, data: bytes, flags: int, keywords: Sequence[str],
            internal_date: int) -> None:
        lf = to_lf(data)
        info = "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)
        kw_letters = []
        for k in keywords:
            if k not in self.letters:
                if len(self.letters) == len(KEYWORD_LETTERS):
                    self.dropped_keywords.add(k)
                    continue
                self.letters[k] = KEYWORD_LETTERS[len(self.letters)]
            kw_letters.append(self.letters[k])
        info += "".join(sorted(kw_letters))
        base = (f"{internal_date}.M{uid}V{self.uidvalidity}.{self.hostname}"
                f",S={len(lf)},W={len(data)}")
        tmp = self.dir / "tmp" / base
        with open(tmp, "xb") as f:
            f.write(lf)
        os.utime(tmp, (internal_date, internal_date))
        os.rename(tmp, self.dir / "cur" / f"{base}:2,{info}")
        self.uids.append((uid, base))

    def close(self, uidnext: int) -> None:
        """Write dovecot-keywords and dovecot-uidlist (so Dovecot keeps the UIDs)."""
        if self.letters:
            (self.dir / "dovecot-keywords").write_text(
                "".join(f"{KEYWORD_LETTERS.index(letter)} {k}\n"
                        for k, letter in self.letters.items())
            )
        lines = [f"3 V{self.uidvalidity} N{uidnext}\n"]
        lines += [f"{uid} :{base}\n" for uid, base in self.uids]
        (self.dir / "dovecot-uidlist").write_text("".join(lines))


def walk_files(root: Path) -> Iterator[Path]:
    """Every message file of a tree (for counting)."""
    for _, d in folders(root):
        for sub in ("cur", "new"):
            if (d / sub).is_dir():
                yield from (d / sub).iterdir()

"""Helpers for the backup and import/export tests: what an IMAP client sees of
an account (every folder's UIDVALIDITY, and per UID its flags and the sha256
of BODY.PEEK[]), from exmaild or from the lab Dovecot alike."""

from __future__ import annotations

import hashlib
import imaplib
import re
import time
from dataclasses import dataclass

_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


@dataclass
class Folder:
    uidvalidity: int
    # uid -> (flags, sha256 of the body, internal date as Unix time)
    messages: dict[int, tuple[frozenset[str], str, int]]
    bodies: dict[int, bytes]

    def by_order(self) -> list[tuple[frozenset[str], str, int]]:
        return [self.messages[u] for u in sorted(self.messages)]


def _name(raw: bytes) -> str:
    raw = raw.strip()
    if raw.startswith(b'"'):
        raw = raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return raw.decode("ascii")  # modified UTF-7, as the server sent it


def snapshot(port: int, user: str, password: str, *, keep_bodies: bool = False
             ) -> dict[str, Folder]:
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login(user, password)
        typ, listing = imap.list()
        assert typ == "OK", listing
        names = []
        for line in listing:
            assert isinstance(line, bytes), line
            m = _LIST.match(line)
            assert m, line
            if b"\\Noselect" not in m["attrs"]:
                names.append(_name(m["name"]))
        out: dict[str, Folder] = {}
        for name in names:
            typ, data = imap.select(f'"{name}"', readonly=True)
            assert typ == "OK", (name, data)
            uidvalidity = int(imap.untagged_responses["UIDVALIDITY"][-1])
            messages: dict[int, tuple[frozenset[str], str, int]] = {}
            bodies: dict[int, bytes] = {}
            if int(data[0]):
                typ, fetched = imap.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                assert typ == "OK", fetched
                for i, item in enumerate(fetched):
                    if not isinstance(item, tuple):
                        continue
                    head, body = item
                    after = fetched[i + 1] if i + 1 < len(fetched) else b""
                    if isinstance(after, bytes):  # items sent after the literal
                        head += after
                    uid_m = _UID.search(head)
                    flags_m = _FLAGS.search(head)
                    assert uid_m and flags_m, head
                    flags = frozenset(f for f in flags_m[1].decode().split() if f != "\\Recent")
                    uid = int(uid_m[1])
                    date = imaplib.Internaldate2tuple(head)
                    assert date is not None, head
                    messages[uid] = (flags, hashlib.sha256(body).hexdigest(),
                                     int(time.mktime(date)))
                    if keep_bodies:
                        bodies[uid] = body
            out[name] = Folder(uidvalidity, messages, bodies)
        return out
    finally:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass

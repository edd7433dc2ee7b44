"""A full disk end to end (issue 9 item 7): the real daemon on a small tmpfs,
SMTP and IMAP APPEND while it fills, refusals while full, every acknowledged
message byte-exact afterwards, and logs that keep working through it."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exmaild.config import Config

from .blobutil import delivered, imap_append, imap_fetch_all, message, pop3_all, setup, smtp_send
from .daemon import Daemon


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(filler: Path, leave: int) -> None:
    """Grow `filler` until the file system has about `leave` bytes free."""
    with open(filler, "ab", buffering=0) as f:
        want = free_bytes(filler.parent) - leave
        if want > 0:
            os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), want)
        if leave:
            return
        block = b"\0" * 4096
        while True:  # the last pages
            try:
                f.write(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                return


def queue_id(reply: bytes) -> str:
    found = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert found, reply
    return found[1].decode()


def test_disk_full_refuses_then_every_acknowledged_message_is_intact(
    cfg: Config, small_disk: Path, tmp_path: Path
) -> None:
    # Blobs, the SQLite database (PostgreSQL has a disk of its own) and both
    # log files on the small disk; the console log (twistd's stdout) elsewhere.
    logfile = small_disk / "var" / "log" / "exmaild.log"
    jsonfile = small_disk / "var" / "log" / "exmaild.json"
    config, ports = setup(small_disk, cfg.database.url, log={"file": str(logfile)})
    d = Daemon(config, ports, tmp_path)
    d.start()
    acked: list[tuple[str, bytes]] = []  # ("smtp" | "imap", what was sent), in UID order
    try:
        def send(n: int, size: int = 4000) -> tuple[int, bytes]:
            raw = message(n, size, "smtp")
            code, text = smtp_send(ports["smtp"], raw)
            if code == 250:
                acked.append(("smtp", raw))
            return code, text

        def append(n: int, size: int = 4000) -> tuple[str, bytes]:
            raw = message(n, size, "imap")
            typ, text = imap_append(ports["imap"], raw)
            if typ == "OK":
                acked.append(("imap", raw))
            return typ, text

        for n in range(3):
            assert send(n)[0] == 250
        for n in range(2):
            assert append(n)[0] == "OK"

        # Nearly full: these appends stop part-way through the segment.
        fill(small_disk / "filler1", leave=300_000)
        assert send(10, 1_000_000) == (452, b"4.3.1 Insufficient system storage")
        typ, text = append(10, 1_000_000)
        assert typ == "NO" and text.startswith(b"[UNAVAILABLE] "), (typ, text)
        # Quite full.
        fill(small_disk / "filler2", leave=0)
        assert free_bytes(small_disk) == 0
        assert send(11) == (452, b"4.3.1 Insufficient system storage")
        typ, text = append(11)
        assert typ == "NO" and text.startswith(b"[UNAVAILABLE] "), (typ, text)
        # More refused mail, so that both logs need a new page of the full disk
        # (4 KiB on tmpfs) and their writes fail too, whatever their offset.
        for n in range(12, 20):
            assert send(n)[0] == 452
        assert d.health()["database"]
        # A log file's last page may still have room (tmpfs allocates whole
        # pages): more refusals, so that each log has hit the full disk.
        for n in range(100, 140):
            assert send(n) == (452, b"4.3.1 Insufficient system storage")
        time.sleep(0.6)  # the observers write every 0.25 s

        # Space again.
        (small_disk / "filler1").unlink()
        (small_disk / "filler2").unlink()
        after = []
        for n in range(20, 23):
            code, text = send(n)
            assert code == 250, text
            after.append(queue_id(text))
        for n in range(20, 22):
            assert append(n)[0] == "OK"

        def check() -> None:
            for got in (imap_fetch_all(ports["imap"]), pop3_all(ports["pop3"])):
                assert len(got) == len(acked) == 10
                for stored, (how, sent) in zip(got, acked, strict=True):
                    assert delivered(stored, sent) if how == "smtp" else stored == sent

        check()
        # The logs kept working: lines after the disk was full are there.
        # Both logs are on the full disk (with [log] file set nothing goes to
        # stdout), so each failure report was lost too; each log says when it
        # works again and how many lines it lost.
        def logs() -> str:
            return logfile.read_text(errors="replace") + jsonfile.read_text(errors="replace")

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            f"writing the log to {p} works again after" in logs() for p in (logfile, jsonfile)
        ):
            time.sleep(0.1)
        text = logs()
        for path in (logfile, jsonfile):
            assert f"writing the log to {path} works again after" in text
            assert "line(s) were lost" in text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and after[-1] not in jsonfile.read_text():
            time.sleep(0.1)
        records, torn = [], 0
        for line in jsonfile.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                torn += 1  # the part of a batch that fitted as the disk filled
        # At most one per time the disk filled up (the 1 MB message, then the filler).
        assert torn <= 2
        logged = " ".join(r["text"] for r in records)
        assert all(f"{q}: " in logged for q in after)
        assert any("works again" in r["text"] for r in records)
        plain = logfile.read_text()
        assert all(f"{q}: " in plain for q in after) and "works again" in plain

        d.stop()
        d.start()
        check()
    finally:
        d.kill()

"""IMAP under many clients: exmaild beside Dovecot 2.3, same workload, same run.

    python3 bench/imap_load.py [--sessions 10,50] [--layouts shared,own]
                               [--seconds 20] [--messages 100] [--database-url URL]
                               [--json FILE]

N sessions log in once, SELECT INBOX and then loop over the standard mix until
the time is up: SELECT INBOX, LIST "" "*", STATUS Archive, FETCH of flags and
envelopes (the last 20 messages), FETCH of one body, STORE of flags and
keywords (+ and -), APPEND, UID STORE \\Deleted of what it appended, EXPUNGE.
``shared``: all N sessions on one account's INBOX, so every session receives
the others' updates (EXISTS, EXPUNGE, FETCH FLAGS: counted and reported);
``own``: session i on account i's INBOX. Both servers run as their own
processes on loopback (exmaild through twistd, Dovecot from ../shared/lab via
bench/lab.py); the sessions run as threads in a few client processes.

Reported per server and run: commands/s of each command, all commands/s, mean
latency, untagged updates received, and server CPU per command (user+system
ticks from /proc/<pid>/stat of the server's processes: exmaild's daemon;
Dovecot's master and all its children) over the timed window. The lab's
Dovecot allows 10 connections per user and IP by default; this script's copy
of its config raises that to 1000 so 50 sessions on one account can log in.

Needs root (Dovecot's lab runs mail processes as the `mail` user).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import mailgen  # noqa: E402
from lab import Lab  # noqa: E402

PASSWORD = "Bench2Pass"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FETCH_WINDOW = 20  # messages whose flags and envelopes each round fetches


def user(i: int) -> str:
    return f"load{i:03d}@example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- CPU accounting
def _ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_ticks(root: int) -> dict[int, int]:
    """Ticks of ``root`` and every descendant, by pid."""
    kids = _children()
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = _ticks(pid)
        todo += kids.get(pid, [])
    return out


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU used between two snapshots; processes born in between count from zero
    (the sessions' processes exist before the window: they log in first)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


# ---------------------------------------------------------------- client
class Session:
    """One IMAP session over a raw socket: reads literals, counts untagged updates."""

    def __init__(self, port: int, login: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb", buffering=1 << 16)
        self.n = 0
        self.exists = 0
        self.updates: Counter[str] = Counter()
        self.rf.readline()
        self.command(f'LOGIN "{login}" "{password}"')

    def _line(self) -> bytes:
        """One response line with its literals inlined."""
        line = self.rf.readline()
        if not line:
            raise RuntimeError("connection closed")
        while (m := re.search(rb"\{(\d+)\}\r\n\Z", line)):
            line += self.rf.read(int(m.group(1))) + self.rf.readline()
        return line

    def command(self, cmd: str, literal: bytes | None = None) -> tuple[str, list[bytes], bytes]:
        """Send one command; returns (OK or NO, untagged lines, the tagged line)."""
        self.n += 1
        tag = b"c%d" % self.n
        if literal is None:
            self.sock.sendall(tag + b" " + cmd.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + cmd.encode() + b" {%d}\r\n" % len(literal))
            line = self._line()
            if not line.startswith(b"+"):
                raise RuntimeError(f"{cmd}: no continuation: {line[:200]!r}")
            self.sock.sendall(literal + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = self._line()
            if line.startswith(tag + b" "):
                status = line.split(b" ", 2)[1].decode()
                if status == "BAD":
                    raise RuntimeError(f"{cmd}: {line[:300]!r}")
                self._track(untagged)
                return status, untagged, line
            if line.startswith(b"* "):
                untagged.append(line)

    def _track(self, lines: list[bytes]) -> None:
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 3 or not parts[1].isdigit():
                continue
            what = parts[2].rstrip(b"\r\n")
            if what == b"EXISTS":
                self.exists = int(parts[1])
                self.updates["EXISTS"] += 1
            elif what == b"EXPUNGE":
                self.exists -= 1
                self.updates["EXPUNGE"] += 1
            elif what == b"FETCH" and b"BODY[" not in line and b"ENVELOPE" not in line:
                self.updates["FETCH"] += 1  # flag changes, ours or the others'

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.command("LOGOUT")
        self.sock.close()


def mix(s: Session, rnd: random.Random, message: bytes, stats: dict[str, list[float]]) -> None:
    """One round of the standard mix; appends each command's seconds to ``stats``."""

    def run(name: str, cmd: str, literal: bytes | None = None) -> tuple[str, list[bytes], bytes]:
        t0 = time.perf_counter()
        res = s.command(cmd, literal)
        stats.setdefault(name, []).append(time.perf_counter() - t0)
        if res[0] != "OK":
            stats.setdefault(name + " (NO)", []).append(0.0)
        return res

    s.updates["EXISTS"] -= 1  # SELECT's own EXISTS is not an update
    run("SELECT", "SELECT INBOX")
    run("LIST", 'LIST "" "*"')
    run("STATUS", "STATUS Archive (MESSAGES UNSEEN UIDNEXT)")
    if s.exists:
        lo = max(1, s.exists - FETCH_WINDOW + 1)
        run("FETCH flags+envelope", f"FETCH {lo}:* (UID FLAGS ENVELOPE)")
    if s.exists:
        run("FETCH body", f"FETCH {rnd.randint(1, s.exists)} BODY.PEEK[]")
    if s.exists:
        k = rnd.randint(1, s.exists)
        run("STORE", f"STORE {k} +FLAGS (\\Flagged $Work)")
    if s.exists:
        k = rnd.randint(1, s.exists)
        run("STORE", f"STORE {k} -FLAGS (\\Flagged $Work)")
    _, _, tagged = run("APPEND", "APPEND INBOX (\\Seen)", message)
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged)  # UIDPLUS: both servers have it
    if m is None:
        raise RuntimeError(f"APPEND without APPENDUID: {tagged!r}")
    run("STORE", f"UID STORE {int(m.group(1))} +FLAGS.SILENT (\\Deleted)")
    run("EXPUNGE", "EXPUNGE")  # the others' appended copies too, if already \Deleted


def worker(port: int, logins: list[str], password: str, seconds: float, start: Any,
           done: Any, out: Any, seed: int) -> None:
    """A client process: one thread per session, all start at ``start`` (a barrier);
    sessions stay open until ``done`` so the server's processes are still there
    for the CPU snapshot taken after the window (Dovecot: one process each)."""
    message = mailgen.fixed_size(3000, seed=seed)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    sessions = [Session(port, login, password) for login in logins]
    for s in sessions:
        s.command("SELECT INBOX")
        s.updates.clear()

    def loop(s: Session, i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        stats: dict[str, list[float]] = {}
        error = ""
        try:
            while time.monotonic() < deadline:
                mix(s, rnd, message, stats)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            error = repr(e)
        with lock:
            results.append({"stats": stats, "updates": dict(s.updates), "error": error})

    start.wait()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=loop, args=(s, i)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)
    done.wait(300)
    for s in sessions:
        s.close()


def load_run(port: int, logins: list[str], password: str, seconds: float,
             server_pid: int, procs: int) -> dict[str, Any]:
    """Run the sessions; returns rates, latencies and server CPU for the window."""
    ctx = mp.get_context("fork")
    procs = max(1, min(procs, len(logins)))
    start = ctx.Barrier(procs + 1)
    done = ctx.Event()
    out = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(port, logins[i::procs], password, seconds,
                                                start, done, out, i + 1))
               for i in range(procs)]
    for w in workers:
        w.start()
    start.wait(timeout=300)  # every session logged in and selected
    before = tree_ticks(server_pid)
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    for _ in workers:
        results += out.get(timeout=seconds + 300)
    wall = time.monotonic() - t0
    after = tree_ticks(server_pid)
    done.set()
    for w in workers:
        w.join()
    stats: dict[str, list[float]] = {}
    updates: Counter[str] = Counter()
    errors = [r["error"] for r in results if r["error"]]
    for r in results:
        for k, v in r["stats"].items():
            stats.setdefault(k, []).extend(v)
        updates.update(r["updates"])
    total = sum(len(v) for k, v in stats.items() if not k.endswith("(NO)"))
    cpu = cpu_seconds(before, after)
    return {
        "wall_s": wall, "commands": total, "rate": total / wall,
        "cpu_s": cpu, "cpu_ms_per_command": cpu / total * 1000 if total else 0.0,
        "per_command": {k: {"count": len(v), "rate": len(v) / wall,
                            "mean_ms": sum(v) / len(v) * 1000 if v else 0.0}
                        for k, v in sorted(stats.items())},
        "updates": dict(updates), "errors": errors[:5], "error_count": len(errors),
    }


# ---------------------------------------------------------------- servers
def fill(config: Path, accounts: int, messages: int) -> None:
    """Child process: accounts with ``messages`` in INBOX and an empty Archive."""
    from twisted.internet import defer, task

    from exmaild.auth.passwords import hash_password
    from exmaild.config import load_config
    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.mailstore.service import MailStore

    mail = mailgen.generate(messages, seed=2)

    async def run(reactor: Any) -> None:
        store = MailStore(load_config(str(config)), reactor)
        store.open()
        store.startService()
        pw = hash_password(PASSWORD)
        try:
            await store.directory.add_domain("example.test")
            base = int(time.time()) - 10**6
            for a in range(accounts):
                acct = await store.directory.add_account(user(a), pw)
                await defer.gatherResults([
                    defer.Deferred.fromCoroutine(store.ingestor.ingest(
                        IngestRequest(raw, [Target(acct.id, "INBOX")], internal_date=base + i)))
                    for i, raw in enumerate(mail)], consumeErrors=True)
        finally:
            store.stopService()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


class Exmaild:
    def __init__(self, workdir: Path, database_url: str, accounts: int, messages: int,
                 workers: int = 1) -> None:
        from tests.daemon import Daemon, write_config

        self.workers = workers
        self.config, ports = write_config(workdir, db_url=database_url,
                                          log={"json_file": "-", "level": "warn"},
                                          server={"workers": workers})
        self.port = ports["imap"]
        self.daemon = Daemon(self.config, ports, workdir)
        subprocess.run([sys.executable, __file__, "--fill", str(self.config), str(accounts),
                        str(messages)], check=True, cwd=workdir)

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def __enter__(self) -> Exmaild:
        self.daemon.start(wait=60)
        if self.workers > 1:  # every worker has adopted its socket and answers
            from tests.workerutil import connect_to, wait_for_workers

            pids = wait_for_workers(self.pid, self.workers)
            for wpid in pids:
                connect_to(self.port, wpid, pids).close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()


class LoadLab(Lab):
    """The lab's Dovecot, allowing 50+ sessions of one user from 127.0.0.1."""

    def _config(self, path: Path) -> str:
        text = super()._config(path)
        if path.name == "dovecot.conf":
            text += "\nprotocol imap {\n  mail_max_userip_connections = 1000\n}\n"
        return text

    @property
    def pid(self) -> int:
        return int((self.dir / "dovecot" / "run" / "master.pid").read_text().split()[0])


def create_archive(port: int, logins: list[str], password: str) -> None:
    for login in logins:
        s = Session(port, login, password)
        s.command("CREATE Archive")  # NO if it exists: fine
        s.close()


# ---------------------------------------------------------------- report
def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if "exmaild" not in r or "dovecot" not in r:
            lines.append(json.dumps(r))
            continue
        ex, dv = r["exmaild"], r["dovecot"]
        lines.append(f"\n{r['sessions']} sessions, {r['layout']} "
                     f"({'one INBOX' if r['layout'] == 'shared' else 'one INBOX each'}), "
                     f"{r['seconds']:.0f}s each; exmaild workers {r.get('workers', 1)}; "
                     f"load average before {r['load_before']:.1f}")
        lines.append(f"{'command':<22}{'exmaild /s':>11}{'dovecot /s':>11}"
                     f"{'exmaild ms':>11}{'dovecot ms':>11}{'ratio':>7}")
        for cmd in sorted(set(ex["per_command"]) | set(dv["per_command"])):
            e = ex["per_command"].get(cmd, {"rate": 0.0, "mean_ms": 0.0})
            d = dv["per_command"].get(cmd, {"rate": 0.0, "mean_ms": 0.0})
            ratio = f"{e['rate'] / d['rate']:>7.2f}" if d["rate"] else f"{'':>7}"
            lines.append(f"{cmd:<22}{e['rate']:>11.1f}{d['rate']:>11.1f}"
                         f"{e['mean_ms']:>11.2f}{d['mean_ms']:>11.2f}{ratio}")
        lines.append(f"{'all commands':<22}{ex['rate']:>11.1f}{dv['rate']:>11.1f}"
                     f"{'':>22}{ex['rate'] / dv['rate']:>7.2f}")
        lines.append(f"server CPU per command: exmaild {ex['cpu_ms_per_command']:.3f} ms "
                     f"({ex['cpu_s']:.1f} s), Dovecot {dv['cpu_ms_per_command']:.3f} ms "
                     f"({dv['cpu_s']:.1f} s)")
        lines.append(f"untagged updates received: exmaild {ex['updates']}, "
                     f"Dovecot {dv['updates']}")
        for name, res in (("exmaild", ex), ("dovecot", dv)):
            if res["error_count"]:
                lines.append(f"{name}: {res['error_count']} sessions failed: {res['errors']}")
    lines.append("\nratio = exmaild rate / Dovecot rate (above 1: exmaild faster)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="10,50")
    ap.add_argument("--layouts", default="shared,own")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--messages", type=int, default=100, help="messages in each INBOX")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--database-url", default="", help="empty: embedded SQLite")
    ap.add_argument("--servers", default="exmaild,dovecot")
    ap.add_argument("--workers", type=int, default=1, help="exmaild's [server] workers")
    ap.add_argument("--py-spy", metavar="PREFIX",
                    help="profile exmaild in each run with py-spy (on PATH; --gil: samples "
                         "of the thread holding the GIL), writing "
                         "collapsed stacks to PREFIX-<layout>-<n>.txt")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sessions.split(",")]
    layouts = args.layouts.split(",")
    accounts = max(sizes) if "own" in layouts else 1
    logins_all = [user(i) for i in range(accounts)]
    mail = mailgen.generate(args.messages, seed=2)
    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-imapload-"))
    results: list[dict[str, Any]] = []
    print(f"filling {accounts} accounts x {args.messages} messages ...", flush=True)
    try:
        with LoadLab(users=logins_all, imap_port=free_port(), pop3_port=free_port(),
                     smtp_port=free_port(), services=("dovecot",)) as lab, \
                Exmaild(work, args.database_url, accounts, args.messages,
                        args.workers) as ex:
            for login in logins_all:
                lab.load_maildir(login, mail)
                lab.warm(login)
            create_archive(ex.port, logins_all, PASSWORD)
            create_archive(lab.imap_port, logins_all, lab.password)
            servers = {"exmaild": (ex.port, PASSWORD, ex.pid),
                       "dovecot": (lab.imap_port, lab.password, lab.pid)}
            servers = {k: v for k, v in servers.items() if k in args.servers.split(",")}
            for layout in layouts:
                for n in sizes:
                    logins = [user(0)] * n if layout == "shared" else logins_all[:n]
                    row: dict[str, Any] = {"sessions": n, "layout": layout,
                                           "seconds": args.seconds, "workers": args.workers,
                                           "load_before": os.getloadavg()[0]}
                    for name, (port, pw, pid) in servers.items():
                        print(f"{layout} x{n}: {name} ...", flush=True)
                        spy = None
                        if args.py_spy and name == "exmaild":
                            spy = subprocess.Popen(
                                ["py-spy", "record", "--nonblocking", "--gil", "--format", "raw",
                                 "-p", str(pid), "-d", str(int(args.seconds)),
                                 "-o", f"{args.py_spy}-{layout}-{n}.txt"],
                                stdout=subprocess.DEVNULL)
                        row[name] = load_run(port, logins, pw, args.seconds, pid,
                                             args.client_procs)
                        if spy is not None:
                            spy.wait(60)
                    results.append(row)
                    print(report([row]), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n== summary ==" + report(results))
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill"]:
        fill(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    if os.geteuid() != 0:
        sys.exit("bench/imap_load.py must run as root (the Dovecot lab needs it)")
    sys.exit(main())

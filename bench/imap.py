"""IMAP benchmark: exmaild beside Dovecot 2.3 on the same workload, same run.

    python3 bench/imap.py [--messages 1000] [--large 100000] [--idle 1000]
                          [--rounds 5] [--database-url URL] [--only 1k,large,idle]
                          [--json FILE]

Both servers run as their own processes on loopback: exmaild through twistd
exactly as deployed, Dovecot from ../shared/lab via bench/lab.py (on free
ports, so another lab may run beside). The client code is bench/reference.py's
(imaplib, whose own parsing is part of every figure), pointed at each server
in turn, plus a raw socket timer (``raw_*``: from sending a command to the end
of its tagged reply, read in large blocks and not parsed); rounds alternate
between the servers, and the first (cold) round is reported apart.

* 1k: 1,000 realistic messages (bench/mailgen.py: multipart, attachments,
  Chinese headers, ~7.6 MB), all \\Seen: ``FETCH 1:* (FLAGS RFC822.SIZE
  ENVELOPE)``, ``FETCH 1:* BODY.PEEK[]``, 1,000 sequential APPENDs.
* large: 100,000 messages (mailgen.iter_messages): SELECT, ``UID FETCH 1:*
  (UID FLAGS)``, ``UID SEARCH CHARSET UTF-8 SUBJECT 季度报告``.
* idle: N IDLE connections to exmaild (spread over accounts), the daemon's
  RSS, and the delay from a delivery's acknowledgement (SMTP 250 when
  exmaild's SMTP listener is there, else an APPEND's OK from another
  session) to the ``* n EXISTS`` push on every session watching that mailbox.

Needs root (Dovecot's lab runs mail processes as the `mail` user).
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import pickle
import resource
import selectors
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import mailgen  # noqa: E402
import reference  # noqa: E402
from lab import Lab  # noqa: E402

USER, USER_LARGE = "user1@example.test", "user2@example.test"
PASSWORD = "Bench2Pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or RssAnon (private memory: without the SQLite file's mapped
    page-cache pages, which VmRSS counts once a scan has touched them)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ---------------------------------------------------------------- exmaild side
def fill(config: Path, what: str, arg: str) -> None:
    """Child process: create accounts and ingest through the one ingest path."""
    from twisted.internet import defer, task

    from exmaild.auth.passwords import hash_password
    from exmaild.config import load_config
    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.mailstore.service import MailStore
    from exmaild.store import flags

    async def run(reactor: Any) -> None:
        store = MailStore(load_config(str(config)), reactor)
        store.open()
        store.startService()
        pw = hash_password(PASSWORD)
        try:
            if await store.directory.get_domain("example.test") is None:
                await store.directory.add_domain("example.test")

            async def account(address: str) -> int:
                acct = await store.directory.get_account(address)
                if acct is None:
                    acct = await store.directory.add_account(address, pw)
                return acct.id

            if what == "idle":
                for i in range(int(arg)):
                    await account(f"idle{i:04d}@example.test")
                return
            if what == "1k":
                aid = await account(USER)
                messages: Any = pickle.load(sys.stdin.buffer)
            else:
                aid = await account(USER_LARGE)
                messages = mailgen.iter_messages(int(arg), 1)
            base = int(time.time()) - 10**6
            window: list[defer.Deferred] = []
            for i, raw in enumerate(messages):
                window.append(defer.Deferred.fromCoroutine(store.ingestor.ingest(
                    IngestRequest(raw, [Target(aid, "INBOX", flags.SEEN)],
                                  internal_date=base + i))))
                if len(window) >= 1024:
                    await defer.gatherResults(window, consumeErrors=True)
                    window = []
            await defer.gatherResults(window, consumeErrors=True)
        finally:
            store.stopService()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


class Exmaild:
    def __init__(self, workdir: Path, database_url: str) -> None:
        from tests.daemon import Daemon, write_config

        self.config, self.ports = write_config(workdir, db_url=database_url,
                                               log={"json_file": "-", "level": "warn"})
        self.port = self.ports["imap"]
        self.daemon = Daemon(self.config, self.ports, workdir)
        self.workdir = workdir

    def fill(self, what: str, arg: str, stdin: bytes = b"") -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--fill", str(self.config), what, arg],
                       input=stdin, check=True, cwd=self.workdir)
        return time.perf_counter() - t0

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def __enter__(self) -> Exmaild:
        self.daemon.start(wait=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()

    def smtp_port(self) -> int | None:
        """exmaild's SMTP port if its SMTP listener answers."""
        try:
            with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=1) as s:
                return self.ports["smtp"] if s.recv(4).startswith(b"220") else None
        except OSError:
            return None


# ---------------------------------------------------------------- raw timing
class RawTimer:
    """Times one command from sending it to the end of its tagged reply, reading
    in large blocks without parsing: the server's time plus the transfer, free
    of imaplib's per-line parsing (which dominates 100,000-line responses)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.n = 0
        self.sock.recv(4096)
        self.run(f'LOGIN "{user}" "{password}"')

    def run(self, command: str | bytes) -> tuple[float, bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        data = command.encode() if isinstance(command, str) else command
        end = b"\r\n" + tag + b" "
        chunks: list[bytes] = []
        tail = b"\r\n"
        t0 = time.perf_counter()
        self.sock.sendall(tag + b" " + data + b"\r\n")
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed")
            chunks.append(chunk)
            probe = tail + chunk
            i = probe.rfind(end)
            if i >= 0 and probe.endswith(b"\r\n") and probe.find(b"\r\n", i + 2) == len(probe) - 2:
                dt = time.perf_counter() - t0
                reply = b"".join(chunks)
                last = (b"\r\n" + reply).rsplit(b"\r\n", 2)[-2]
                if last.split(b" ", 2)[1] != b"OK":
                    raise RuntimeError(f"{command!r}: {reply[-300:]!r}")
                return dt, reply
            tail = probe[-64:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.run("LOGOUT")
        self.sock.close()


def raw_1k(port: int, user: str, password: str, n: int, total: int) -> dict[str, float]:
    t = RawTimer(port, user, password)
    try:
        t.run("SELECT INBOX")
        env, reply = t.run("FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)")
        if reply.count(b" ENVELOPE (") != n:
            raise RuntimeError("FETCH ENVELOPE: wrong count")
        body, reply = t.run("FETCH 1:* BODY.PEEK[]")
        if len(reply) < total:
            raise RuntimeError("FETCH BODY[]: short")
        return {"raw_fetch_envelope_s": env, "raw_fetch_body_s": body}
    finally:
        t.close()


def raw_large(port: int, user: str, password: str, n: int, hits: int) -> dict[str, float]:
    t = RawTimer(port, user, password)
    try:
        sel, reply = t.run("SELECT INBOX")
        if b"* %d EXISTS" % n not in reply:
            raise RuntimeError(f"SELECT: {reply[:300]!r}")
        fetch, reply = t.run("UID FETCH 1:* (UID FLAGS)")
        if reply.count(b" FETCH (") != n:
            raise RuntimeError("UID FETCH: wrong count")
        word = mailgen.SEARCH_WORD.encode()
        search, reply = t.run(b"UID SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n" % len(word) + word)
        found = reply.split(b"\r\n")[0].split()[2:]
        if len(found) != hits:
            raise RuntimeError(f"SEARCH: {len(found)} hits, expected {hits}")
        return {"raw_select_s": sel, "raw_uid_fetch_flags_s": fetch, "raw_search_s": search}
    finally:
        t.close()


# ---------------------------------------------------------------- workloads
def bench_1k(ex: Exmaild, lab: Lab, n: int, rounds: int) -> dict[str, Any]:
    messages = mailgen.generate(n, seed=1)
    total = sum(map(len, messages))
    print(f"1k: {n} messages, {total / 1e6:.1f} MB; filling ...", flush=True)
    fill_s = ex.fill("1k", str(n), pickle.dumps(messages))
    lab.reset_maildir(USER)
    lab.load_maildir(USER, messages, flags="S")
    lab.warm(USER)
    servers = {"exmaild": (ex.port, PASSWORD), "dovecot": (lab.imap_port, lab.password)}
    rows: dict[str, dict[str, list[float]]] = {s: {} for s in servers}

    def fetch(name: str) -> dict[str, float]:
        port, pw = servers[name]
        res = reference.time_imap_fetch("127.0.0.1", port, USER, pw, expect_messages=n,
                                        expect_bytes=total, rounds=1)
        return res | raw_1k(port, USER, pw, n, total)

    first = {name: fetch(name) for name in servers}  # the cold round, reported apart
    for _ in range(rounds):
        for name in servers:
            for k, v in fetch(name).items():
                if not k.endswith("_first_s"):
                    rows[name].setdefault(k, []).append(v)
    for _ in range(max(1, rounds // 2)):
        for name, (port, pw) in servers.items():
            res = reference.time_imap_append("127.0.0.1", port, USER, pw, messages)
            rows[name].setdefault("append_s", []).append(res["append_s"])
    return {"fill_s": fill_s, "rows": rows, "first_session": first}


def bench_large(ex: Exmaild, lab: Lab, n: int, rounds: int) -> dict[str, Any]:
    print(f"large: {n} messages; filling exmaild ...", flush=True)
    fill_s = ex.fill("large", str(n))
    print(f"large: exmaild filled in {fill_s:.0f}s; filling Dovecot ...", flush=True)
    lab.reset_maildir(USER_LARGE)
    t0 = time.perf_counter()
    lab.load_maildir(USER_LARGE, mailgen.iter_messages(n, 1), flags="S")
    dovecot_index_s = lab.warm(USER_LARGE)
    print(f"large: Dovecot loaded in {time.perf_counter() - t0:.0f}s", flush=True)
    hits = mailgen.search_hits(n)
    servers = {"exmaild": (ex.port, PASSWORD), "dovecot": (lab.imap_port, lab.password)}
    rows: dict[str, dict[str, list[float]]] = {s: {} for s in servers}
    first: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, (port, pw) in servers.items():
            res = reference.time_imap_large("127.0.0.1", port, USER_LARGE, pw,
                                            expect_messages=n, expect_hits=hits, rounds=1)
            res |= raw_large(port, USER_LARGE, pw, n, hits)
            first.setdefault(name, res)
            for k, v in res.items():
                if not k.endswith("_first_s"):
                    rows[name].setdefault(k, []).append(v)
    return {"fill_s": fill_s, "dovecot_index_s": dovecot_index_s, "rows": rows,
            "first_session": first}


class IdleClients:
    """N IDLE sessions driven by one selector loop (no thread per session)."""

    def __init__(self, port: int, users: list[str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: dict[socket.socket, dict[str, Any]] = {}
        for user in users:
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            st = {"user": user, "buf": b"", "idling": False, "exists": []}
            self.socks[s] = st
            self.sel.register(s, selectors.EVENT_READ, st)
            s.sendall(f'a LOGIN {user} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            st = key.data
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError(f"session of {st['user']} closed: {st['buf'][-200:]!r}")
            now = time.perf_counter()
            st["buf"] += data
            *lines, st["buf"] = st["buf"].split(b"\r\n")
            for line in lines:
                if line.startswith(b"+ "):
                    st["idling"] = True
                elif line.endswith(b" EXISTS") and st["idling"]:
                    st["exists"].append(now)
                elif line[:2] in (b"a ", b"b ") and b" OK" not in line[:5]:
                    raise RuntimeError(f"{st['user']}: {line!r}")

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > deadline:
                raise TimeoutError(what)
            self.poll(0.05)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def _deliver(port: int, smtp: int | None, user: str, msg: bytes, times: list[float]) -> None:
    """Deliver one message; appends (time submitted, time acknowledged)."""
    if smtp:
        with smtplib.SMTP("127.0.0.1", smtp) as s:
            times.append(time.perf_counter())
            s.sendmail("bench@example.test", [user], msg)  # returns on 250
            times.append(time.perf_counter())
        return
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, PASSWORD)
    times.append(time.perf_counter())
    typ, data = c.append("INBOX", None, None, msg)
    times.append(time.perf_counter())
    if typ != "OK":
        raise RuntimeError(f"APPEND: {typ} {data}")
    c.logout()


def bench_idle(ex: Exmaild, n: int, accounts: int, deliveries: int) -> dict[str, Any]:
    print(f"idle: {n} IDLE sessions over {accounts} accounts ...", flush=True)
    ex.fill("idle", str(accounts))
    users = [f"idle{i % accounts:04d}@example.test" for i in range(n)]
    rss_before, anon_before = rss_mb(ex.pid), rss_mb(ex.pid, "RssAnon")
    t0 = time.perf_counter()
    clients = IdleClients(ex.port, users)
    try:
        clients.wait(lambda: all(st["idling"] for st in clients.socks.values()), 600,
                     "sessions to start idling")
        setup_s = time.perf_counter() - t0
        time.sleep(2)
        clients.poll(0.1)
        rss_idle, anon_idle = rss_mb(ex.pid), rss_mb(ex.pid, "RssAnon")
        smtp = ex.smtp_port()
        via = "SMTP 250" if smtp else "APPEND OK"
        delays: list[float] = []
        from_submit: list[float] = []
        msg = mailgen.fixed_size(2048)
        for k in range(deliveries):
            user = users[(k * 7) % accounts]
            watchers = [st for st in clients.socks.values() if st["user"] == user]
            for st in watchers:
                st["exists"].clear()
            times: list[float] = []
            th = threading.Thread(target=_deliver, args=(ex.port, smtp, user, msg, times))
            th.start()
            clients.wait(lambda w=watchers, t=th: all(st["exists"] for st in w)
                         and not t.is_alive(), 30, "EXISTS pushes")
            th.join()
            t_sent, t_ack = times
            for st in watchers:
                delays.append(max(0.0, st["exists"][0] - t_ack))
                from_submit.append(st["exists"][0] - t_sent)
        return {
            "sessions": n, "accounts": accounts, "setup_s": setup_s, "via": via,
            "rss_before_mb": rss_before, "rss_idle_mb": rss_idle,
            "rss_anon_before_mb": anon_before, "rss_anon_idle_mb": anon_idle,
            "push_p50_ms": pct(delays, 50) * 1000, "push_p99_ms": pct(delays, 99) * 1000,
            "push_max_ms": max(delays) * 1000,
            "submit_to_push_p50_ms": pct(from_submit, 50) * 1000,
            "submit_to_push_p99_ms": pct(from_submit, 99) * 1000,
            "pushes": len(delays),
        }
    finally:
        clients.close()


# ---------------------------------------------------------------- report
def _table(title: str, rows: dict[str, dict[str, list[float]]], ops: list[str]) -> list[str]:
    out = [f"\n{title}", f"{'operation':<18}{'exmaild med':>13}{'dovecot med':>13}"
           f"{'exmaild best':>14}{'dovecot best':>14}{'ratio':>8}"]
    for op in ops:
        ex, dv = rows["exmaild"].get(op), rows["dovecot"].get(op)
        if not ex or not dv:
            continue
        em, dm = statistics.median(ex), statistics.median(dv)
        out.append(f"{op:<18}{em * 1000:>11.1f}ms{dm * 1000:>11.1f}ms"
                   f"{min(ex) * 1000:>12.1f}ms{min(dv) * 1000:>12.1f}ms{em / dm:>7.2f}x")
    return out


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']}"]
    if "1k" in results:
        fill_s = results["1k"]["fill_s"]
        lines += _table(f"{args.messages:,} messages (rounds: {args.rounds}; fill {fill_s:.1f}s)",
                        results["1k"]["rows"], ["fetch_envelope_s", "fetch_body_s",
                                                "raw_fetch_envelope_s", "raw_fetch_body_s",
                                                "append_s"])
        lines.append(f"first (cold) round: {results['1k']['first_session']}")
    if "large" in results:
        lines += _table(f"{args.large:,} messages (imaplib: client parsing included; raw: "
                        "send to tagged reply, no parsing)", results["large"]["rows"],
                        ["select_s", "uid_fetch_flags_s", "search_s", "raw_select_s",
                         "raw_uid_fetch_flags_s", "raw_search_s"])
        lines.append(f"first session: {results['large']['first_session']}")
    if "idle" in results:
        lines.append(f"\nIDLE: {json.dumps(results['idle'])}")
    lines.append("\nratio = exmaild median / Dovecot median (below 1: exmaild faster)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--idle-accounts", type=int, default=100)
    ap.add_argument("--deliveries", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="1k,large,idle")
    ap.add_argument("--database-url", default="", help="empty: embedded SQLite")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="keep exmaild's work directory")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the daemon inherits it
    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-imap-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "loadavg_before": os.getloadavg()[0]}}

    def done(part: str, value: Any) -> None:
        results[part] = value
        results["machine"]["loadavg_after"] = os.getloadavg()[0]
        print(report(args, {"machine": results["machine"], part: value}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    try:
        with Lab(users=[USER, USER_LARGE], imap_port=free_port(), pop3_port=free_port(),
                 smtp_port=free_port()) as lab, Exmaild(work, args.database_url) as ex:
            if "1k" in parts:
                done("1k", bench_1k(ex, lab, args.messages, args.rounds))
            if "large" in parts:
                done("large", bench_large(ex, lab, args.large, max(3, args.rounds // 2)))
                lab.reset_maildir(USER_LARGE)
            if "idle" in parts:
                done("idle", bench_idle(ex, args.idle, args.idle_accounts, args.deliveries))
    finally:
        if args.keep:
            print(f"exmaild work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + report(args, results))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill"]:
        fill(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
        sys.exit(0)
    if os.geteuid() != 0:
        sys.exit("bench/imap.py must run as root (the Dovecot lab needs it)")
    sys.exit(main())

"""Reference measurements: the same client workloads against any server.

The ``time_*`` / ``smtp_ingest`` functions take (host, port, user, password) and
know nothing about the server, so exmaild's bench scripts point the exact same
client code at exmaild's ports. The ``postfix_*`` / ``dovecot_*`` wrappers run
them against a :class:`lab.Lab` and return the reference figures.

Every function returns ``dict[str, float]``; keys end in ``_s`` (seconds) or
``_per_s`` (rate). ``X_s`` is the best of ``rounds`` runs, ``X_first_s`` the
first run. Responses are checked (message counts, byte totals, search hits),
so a wrong answer raises instead of producing a fast number.

    python3 bench/reference.py [smtp imap imap100k pop3] [--n100k N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import poplib
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

if __package__:
    from . import mailgen
    from .lab import Lab, free_port
else:  # run as a script: bench/ is on sys.path
    import mailgen
    from lab import Lab, free_port

USER = "user1@example.test"
USER_100K = "user2@example.test"
_FETCH_LINE = re.compile(rb"^\d+ \(")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _best_of(rounds: int, fn: Callable[[], Any], check: Callable[[Any], None],
             name: str) -> dict[str, float]:
    """Run ``fn`` ``rounds`` times, check each result; first and best seconds."""
    times = []
    for _ in range(rounds):
        dt, result = _timed(fn)
        check(result)
        times.append(dt)
    return {f"{name}_s": min(times), f"{name}_first_s": times[0]}


def _ok(typ: str, data: Any, what: str) -> Any:
    if typ != "OK":
        raise RuntimeError(f"{what} failed: {typ} {data!r}"[:500])
    return data


def _expect(what: str, got: int, want: int | None) -> None:
    if want is not None and got != want:
        raise RuntimeError(f"{what}: got {got}, expected {want}")


def _fetch_items(data: list[Any]) -> list[Any]:
    """FETCH responses in imaplib's data list (tuples carry a literal)."""
    return [d for d in data if _FETCH_LINE.match(d[0] if isinstance(d, tuple) else d)]


def imap_login(host: str, port: int, user: str, password: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(host, port)
    imap.login(user, password)
    return imap


def _logout(imap: imaplib.IMAP4) -> None:
    """LOGOUT and close; imaplib's logout never raises for a failed command."""
    with contextlib.suppress(OSError):
        imap.logout()


# ---------------------------------------------------------------- IMAP
def time_imap_fetch(host: str, port: int, user: str, password: str, *,
                    mailbox: str = "INBOX", expect_messages: int | None = None,
                    expect_bytes: int | None = None, rounds: int = 3) -> dict[str, float]:
    """``FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)`` and ``FETCH 1:* BODY.PEEK[]``."""
    imap = imap_login(host, port, user, password)
    try:
        _expect("EXISTS", int(_ok(*imap.select(mailbox), "SELECT")[0]), expect_messages)

        def check_envelope(data: list[Any]) -> None:
            _expect("FETCH ENVELOPE responses", len(_fetch_items(data)), expect_messages)

        def check_body(data: list[Any]) -> None:
            items = [d for d in _fetch_items(data) if isinstance(d, tuple)]
            _expect("FETCH BODY[] responses", len(items), expect_messages)
            _expect("FETCH BODY[] bytes", sum(len(d[1]) for d in items), expect_bytes)

        res = _best_of(rounds, lambda: _ok(*imap.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)"),
                                           "FETCH ENVELOPE"), check_envelope, "fetch_envelope")
        res |= _best_of(rounds, lambda: _ok(*imap.fetch("1:*", "BODY.PEEK[]"), "FETCH BODY[]"),
                        check_body, "fetch_body")
        return res
    finally:
        _logout(imap)


def time_imap_append(host: str, port: int, user: str, password: str,
                     messages: Sequence[bytes], *, mailbox: str = "BenchAppend",
                     delete_after: bool = True) -> dict[str, float]:
    """``len(messages)`` sequential APPENDs into a freshly created ``mailbox``."""
    imap = imap_login(host, port, user, password)
    try:
        imap.delete(mailbox)  # leftovers of an earlier run; NO if absent
        _ok(*imap.create(mailbox), "CREATE")

        def run() -> None:
            for msg in messages:
                _ok(*imap.append(mailbox, None, None, msg), "APPEND")

        dt, _ = _timed(run)
        _expect("APPENDed messages", int(_ok(*imap.select(mailbox, True), "SELECT")[0]),
                len(messages))
        if delete_after:
            imap.close()
            imap.delete(mailbox)
        return {"append_s": dt, "append_per_s": len(messages) / dt}
    finally:
        _logout(imap)


def time_imap_workload(host: str, port: int, user: str, password: str, *,
                       append_messages: Sequence[bytes] = (), mailbox: str = "INBOX",
                       expect_messages: int | None = None, expect_bytes: int | None = None,
                       rounds: int = 3) -> dict[str, float]:
    """The 1k-mailbox IMAP workload: both FETCHes, then sequential APPENDs."""
    res = time_imap_fetch(host, port, user, password, mailbox=mailbox,
                          expect_messages=expect_messages, expect_bytes=expect_bytes,
                          rounds=rounds)
    if append_messages:
        res |= time_imap_append(host, port, user, password, append_messages)
    return res


def _search_literal(imap: imaplib.IMAP4, word: str) -> list[bytes]:
    """``UID SEARCH CHARSET UTF-8 SUBJECT {n}`` with ``word`` sent as a literal."""
    imap.literal = word.encode()
    return _ok(*imap.uid("SEARCH", "CHARSET", "UTF-8", "SUBJECT"), "UID SEARCH")[0].split()


def time_imap_large(host: str, port: int, user: str, password: str, *,
                    word: str = mailgen.SEARCH_WORD, mailbox: str = "INBOX",
                    expect_messages: int | None = None, expect_hits: int | None = None,
                    rounds: int = 3) -> dict[str, float]:
    """Big-mailbox workload: SELECT, ``UID FETCH 1:* (UID FLAGS)``, UID SEARCH SUBJECT."""
    imap = imap_login(host, port, user, password)
    try:
        def select() -> int:
            return int(_ok(*imap.select(mailbox), "SELECT")[0])

        res = _best_of(rounds, select, lambda n: _expect("EXISTS", n, expect_messages),
                       "select")
        res |= _best_of(rounds, lambda: _ok(*imap.uid("FETCH", "1:*", "(UID FLAGS)"),
                                            "UID FETCH"),
                        lambda d: _expect("UID FETCH responses", len(_fetch_items(d)),
                                          expect_messages), "uid_fetch_flags")
        res |= _best_of(rounds, lambda: _search_literal(imap, word),
                        lambda hits: _expect("SEARCH hits", len(hits), expect_hits), "search")
        return res
    finally:
        _logout(imap)


# ---------------------------------------------------------------- POP3
def time_pop3_workload(host: str, port: int, user: str, password: str, *,
                       expect_messages: int | None = None, expect_bytes: int | None = None,
                       rounds: int = 3) -> dict[str, float]:
    """STAT, LIST, UIDL and RETR of every message; one session per round, no DELE."""
    rows: dict[str, list[float]] = {"stat": [], "list": [], "uidl": [], "retr": []}
    for _ in range(rounds):
        pop = poplib.POP3(host, port)
        try:
            pop.user(user)
            pop.pass_(password)
            dt, (count, size) = _timed(pop.stat)
            rows["stat"].append(dt)
            _expect("STAT count", count, expect_messages)
            _expect("STAT octets", size, expect_bytes)
            dt, (_, listing, _) = _timed(pop.list)
            rows["list"].append(dt)
            _expect("LIST entries", len(listing), count)
            dt, (_, uids, _) = _timed(pop.uidl)
            rows["uidl"].append(dt)
            _expect("UIDL entries", len(uids), count)
            dt, octets = _timed(lambda p=pop, c=count: sum(p.retr(i)[2] for i in range(1, c + 1)))
            rows["retr"].append(dt)
            _expect("RETR octets (as poplib counts them, CRLF included)", octets, size)
            pop.quit()
        finally:
            pop.close()
    res: dict[str, float] = {}
    for name, times in rows.items():
        res |= {f"{name}_s": min(times), f"{name}_first_s": times[0]}
    return res


# ---------------------------------------------------------------- SMTP
def smtp_ingest(host: str, port: int, n: int = 5000, sessions: int = 10, size: int = 4096,
                rcpt: str = USER, *, sender: str = "bench@example.test",
                message: bytes | None = None, reuse: bool = False,
                timeout: float = 900) -> dict[str, float]:
    """Ingest rate measured with Postfix's smtp-source (what the lab figures used).

    ``message`` None sends smtp-source's own ``-l size`` payload; otherwise that
    exact message (``-F``, e.g. ``mailgen.fixed_size()``). ``reuse`` is ``-d``
    (several messages per connection). The clock runs from before the first
    connect until smtp-source exits, which it does only after every DATA got its
    2xx reply (without ``-A`` any other reply is fatal).
    """
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(n), "-f", sender, "-t", rcpt]
    cmd += ["-d"] if reuse else []
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        if message is None:
            cmd += ["-l", str(size)]
        else:  # smtp-source appends CRLF to each line of the file
            f.write(message.replace(b"\r\n", b"\n"))
            f.flush()
            cmd += ["-F", f.name]
        cmd.append(f"{host}:{port}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"smtp-source failed ({proc.returncode}): {proc.stderr.strip()}")
    return {"msg_per_s": n / dt, "ingest_s": dt}


def smtp_ingest_smtplib(host: str, port: int, n: int = 5000, sessions: int = 10,
                        message: bytes | None = None, rcpt: str = USER, *,
                        sender: str = "bench@example.test",
                        reuse: bool = False) -> dict[str, float]:
    """Same measurement with ``sessions`` smtplib threads (no smtp-source needed).

    Python-side overhead is higher than smtp-source's; compare like with like.
    """
    message = message or mailgen.fixed_size()
    errors: list[BaseException] = []
    counts = [n // sessions + (1 if k < n % sessions else 0) for k in range(sessions)]

    def worker(count: int) -> None:
        try:
            client = None
            for _ in range(count):
                client = client or smtplib.SMTP(host, port)
                client.sendmail(sender, [rcpt], message)  # raises unless 250
                if not reuse:
                    client.quit()
                    client = None
            if client:
                client.quit()
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in counts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} SMTP sessions failed: {errors[0]!r}")
    return {"msg_per_s": n / dt, "ingest_s": dt}


def wait_for(count: Callable[[], int], want: int, timeout: float = 300,
             step: float = 0.005) -> float:
    """Poll ``count()`` until it reaches ``want``; returns when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while count() < want:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {count()} of {want} messages arrived")
        time.sleep(step)
    return time.perf_counter()


# ---------------------------------------------------------------- lab wrappers
def postfix_smtp_ingest(lab: Lab, n: int = 5000, sessions: int = 10, size: int = 4096, *,
                        user: str = USER, message: bytes | None = None,
                        reuse: bool = False) -> dict[str, float]:
    """Postfix smtpd + virtual(8): msg/s, and when all n were in the maildir."""
    lab.clear_delivered(user)
    t0 = time.perf_counter()
    res = smtp_ingest(lab.host, lab.smtp_port, n, sessions, size, user,
                      message=message, reuse=reuse)
    done = wait_for(lambda: lab.count_delivered(user), n)
    lab.clear_delivered(user)
    return res | {"all_delivered_s": done - t0, "delivery_lag_s": done - t0 - res["ingest_s"]}


def _load(lab: Lab, user: str, messages: Iterable[bytes]) -> dict[str, float]:
    lab.reset_maildir(user)
    dt, count = _timed(lambda: lab.load_maildir(user, messages, flags="S"))
    return {"messages": count, "load_s": dt, "index_s": lab.warm(user)}


def dovecot_imap(lab: Lab, messages: Sequence[bytes], *, user: str = USER,
                 rounds: int = 3) -> dict[str, float]:
    """1k mailbox: FETCH ENVELOPE, FETCH BODY.PEEK[], sequential APPENDs."""
    res = _load(lab, user, messages)
    return res | time_imap_workload(
        lab.host, lab.imap_port, user, lab.password, append_messages=messages,
        expect_messages=len(messages), expect_bytes=sum(len(m) for m in messages),
        rounds=rounds)


def dovecot_imap_large(lab: Lab, n: int = 100_000, *, user: str = USER_100K, seed: int = 1,
                       rounds: int = 3) -> dict[str, float]:
    """n-message mailbox (pooled bodies): SELECT, UID FETCH (UID FLAGS), SEARCH."""
    res = _load(lab, user, mailgen.iter_messages(n, seed))
    return res | time_imap_large(lab.host, lab.imap_port, user, lab.password,
                                 expect_messages=n, expect_hits=mailgen.search_hits(n),
                                 rounds=rounds)


def dovecot_pop3(lab: Lab, messages: Sequence[bytes], *, user: str = USER,
                 rounds: int = 3) -> dict[str, float]:
    """STAT, LIST, UIDL, RETR of every message of a 1k mailbox."""
    res = _load(lab, user, messages)
    return res | time_pop3_workload(lab.host, lab.pop3_port, user, lab.password,
                                    expect_messages=len(messages),
                                    expect_bytes=sum(len(m) for m in messages), rounds=rounds)


# ---------------------------------------------------------------- CLI
def fsync_latency(base: str | None = None, n: int = 50) -> float:
    """Mean seconds for write(4 KiB) + fsync() of a new file under ``base``."""
    with tempfile.TemporaryDirectory(dir=base) as d:
        t0 = time.perf_counter()
        for i in range(n):
            fd = os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            os.close(fd)
        return (time.perf_counter() - t0) / n


def _print(title: str, res: dict[str, float]) -> None:
    print(f"{title}:")
    for k, v in res.items():
        if k.endswith("per_s"):
            print(f"  {k:24} {v:11.1f} msg/s")
        elif k.endswith("_s"):
            print(f"  {k:24} {v * 1000:11.1f} ms")
        else:
            print(f"  {k:24} {v:11.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the Dovecot/Postfix reference benchmarks.")
    parts = ["smtp", "imap", "pop3", "imap100k"]
    ap.add_argument("what", nargs="*", help=f"any of {', '.join(parts)} (default: all)")
    ap.add_argument("--n100k", type=int, default=100_000, help="size of the large mailbox")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--lab-base", help="create the lab dir under this dir (e.g. /dev/shm)")
    ap.add_argument("--free-ports", action="store_true", help="don't use 10143/10110/10025")
    args = ap.parse_args(argv)
    args.what = args.what or parts
    if set(args.what) - set(parts):
        ap.error(f"unknown workload(s): {', '.join(set(args.what) - set(parts))}")
    results: dict[str, dict[str, float]] = {"machine": {
        "cpus": os.cpu_count() or 0, "loadavg_1m_before": os.getloadavg()[0]}}
    # an fsync-latency probe: APPEND and SMTP ingest are bound by it
    results["machine"]["fsync_ms"] = fsync_latency(args.lab_base) * 1000
    messages = mailgen.generate(1000) if {"imap", "pop3"} & set(args.what) else []
    ports = ({"imap_port": free_port(), "pop3_port": free_port(), "smtp_port": free_port()}
             if args.free_ports else {})
    lab_dir = tempfile.mkdtemp(prefix="exmaild-lab-", dir=args.lab_base)
    with Lab(users=[USER, USER_100K], dir=lab_dir, keep=False, **ports) as lab:
        if "smtp" in args.what:
            results["postfix_smtp_source_l4096"] = postfix_smtp_ingest(lab)
            results["postfix_smtp_source_l4096_reuse"] = postfix_smtp_ingest(lab, reuse=True)
            results["postfix_smtp_source_fixed_size"] = postfix_smtp_ingest(
                lab, message=mailgen.fixed_size())
        if "imap" in args.what:
            results["dovecot_imap_1k"] = dovecot_imap(lab, messages, rounds=args.rounds)
        if "pop3" in args.what:
            results["dovecot_pop3_1k"] = dovecot_pop3(lab, messages, rounds=args.rounds)
        if "imap100k" in args.what:
            results["dovecot_imap_large"] = dovecot_imap_large(lab, args.n100k,
                                                               rounds=args.rounds)
            lab.reset_maildir(USER_100K)
    results["machine"]["loadavg_1m_after"] = os.getloadavg()[0]
    for title, res in results.items():
        _print(title, res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

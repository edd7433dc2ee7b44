"""IMAP login rate: exmaild (login log on) beside Dovecot 2.3 from the lab.

    python3 bench/login.py [--users 40] [--logins 400] [--clients 4] [--database-url URL]

Each login is a new TCP connection: greeting, LOGIN, LOGOUT (imaplib), from
`--clients` threads at once. exmaild is measured four ways:

- password, cold: the first login of each of `--users` members (argon2 each);
- password, cached: `--logins` more (the verified-password cache, [auth] cache_ttl);
- app password, cold / cached: the same for members with secure login on,
  logging in with an app password.

Every exmaild login goes through the login gate (throttling counts, login
policy, one login_log row). Dovecot's lab passdb is a PLAIN-scheme file: no
hashing at all, so its figure is the ceiling without password hashing.
Needs root (Dovecot's lab runs mail processes as the `mail` user).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from lab import DOMAIN, Lab, free_port  # noqa: E402

PASSWORD = "Bench2Pass"


def fill(config: Path, users: int) -> None:
    """Members pw<N> (password) and app<N> (secure login, one app password);
    prints the app passwords, one a line."""
    from twisted.internet import defer, task

    from exmaild.auth.service import LoginSecurity
    from exmaild.config import load_config
    from exmaild.directory.actor import CLI
    from exmaild.directory.service import DirectoryService
    from exmaild.startup_checks import check_database
    from exmaild.store.connector import Store

    cfg = load_config(str(config))
    check_database(cfg, create=True)

    async def run(reactor: object) -> None:
        store = Store(cfg, reactor)
        store.open()
        store.startService()
        try:
            svc = DirectoryService(store, cfg.directory)
            sec = LoginSecurity(svc)
            await svc.add_enterprise(CLI, "Bench")
            await svc.add_domain(CLI, DOMAIN)
            for n in range(users):
                await svc.add_member(CLI, f"pw{n}@{DOMAIN}", PASSWORD)
                await svc.add_member(CLI, f"app{n}@{DOMAIN}", PASSWORD)
                await sec.set_secure_login(CLI, f"app{n}@{DOMAIN}", True)
                _info, app = await sec.add_app_password(CLI, f"app{n}@{DOMAIN}", "bench")
                print(app)
        finally:
            store.stopService()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


def login_once(port: int, user: str, password: str) -> None:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    try:
        c.login(user, password)
    finally:
        c.logout()


def rate(port: int, creds: list[tuple[str, str]], clients: int) -> float:
    """Logins per second over `creds`, `clients` at a time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda uc: login_once(port, *uc), creds))
    return len(creds) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--logins", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--database-url", default="", help="empty: embedded SQLite")
    args = ap.parse_args()
    from tests.daemon import Daemon, write_config

    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-login-"))
    load_before = os.getloadavg()[0]
    print(f"IMAP LOGIN+LOGOUT, a new connection each, {args.clients} clients; "
          f"{args.users} users cold, {args.logins} logins cached", flush=True)

    class Rows(list):  # type: ignore[type-arg]
        def append(self, row: tuple[str, float]) -> None:
            super().append(row)
            print(f"{row[0]:<40}{row[1]:>10.1f} logins/s", flush=True)

    rows = Rows()
    try:
        config, ports = write_config(work, db_url=args.database_url, log={"json_file": "-"},
                                     directory={"member_limit": 2 * args.users + 10},
                                     auth={"threads": 2})
        out = subprocess.run([sys.executable, __file__, "--fill", str(config), str(args.users)],
                             check=True, cwd=work, capture_output=True, text=True).stdout
        apps = out.split()
        assert len(apps) == args.users, out
        pw = [(f"pw{n}@{DOMAIN}", PASSWORD) for n in range(args.users)]
        app = [(f"app{n}@{DOMAIN}", apps[n]) for n in range(args.users)]

        def repeat(creds: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [creds[i % len(creds)] for i in range(args.logins)]

        d = Daemon(config, ports, work)
        d.start(wait=60)
        try:
            port = ports["imap"]
            rows.append(("exmaild password, cold (argon2 each)", rate(port, pw, args.clients)))
            rows.append(("exmaild password, cached", rate(port, repeat(pw), args.clients)))
            rows.append(("exmaild app password, cold", rate(port, app, args.clients)))
            rows.append(("exmaild app password, cached", rate(port, repeat(app), args.clients)))
        finally:
            d.stop()
        users = [f"user{n}@{DOMAIN}" for n in range(1, 5)]
        with Lab(users=users, imap_port=free_port(), pop3_port=free_port(),
                 smtp_port=free_port(), services=("dovecot",)) as lab:
            creds = [(u, lab.password) for u in users]
            rate(lab.imap_port, creds, args.clients)  # warm-up
            rows.append(("dovecot (PLAIN passdb)",
                         rate(lab.imap_port, repeat(creds), args.clients)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill"]:
        fill(Path(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())

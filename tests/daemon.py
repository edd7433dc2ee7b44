"""Run the real daemon through twistd in a subprocess, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import forkserver
from .conftest import CHEAP_ARGON2, PG_BLOBS, free_ports

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "admin",
            "autoconfig", "managesieve")


def write_config(tmp: Path, db_url: str = "", **sections: dict[str, Any]) -> tuple[Path, dict]:
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    lines = []
    for name, base in (("paths", {"data": str(tmp / "var")}),
                       ("server", {"hostname": "mx.example.test"})):
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in {**base, **sections.pop(name, {})}.items()]
    lines += ["[database]", f'url = "{db_url}"', "[listen]"]
    lines += [f'{svc} = "127.0.0.1:{p}"' for svc, p in ports.items()]
    # The test helpers' cheap argon2id parameters (see conftest.CHEAP_ARGON2).
    sections["auth"] = {**CHEAP_ARGON2, **sections.get("auth", {})}
    if PG_BLOBS and db_url.startswith("postgresql"):
        sections["blobs"] = {"backend": "postgresql", **sections.get("blobs", {})}
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp / "exmaild.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, ports


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


class Daemon:
    def __init__(self, config: Path, ports: dict[str, int], cwd: Path) -> None:
        self.config, self.ports, self.cwd = config, ports, cwd
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None
        self.log = cwd / "twistd.out"

    def start(self, wait: float = 30.0, *, extra_env: dict[str, str] | None = None,
              config_arg: bool = True, wrapper: list[str] | None = None) -> float:
        """Start and wait for /healthz; returns seconds until it answered.

        `config_arg=False` leaves out --config (the daemon looks for its file);
        `wrapper` runs the daemon through a command (e.g. setpriv).

        A port free_ports() picked may be taken by another test process before
        the daemon binds it: then the ports are picked again (in `self.ports`,
        the dict the test holds) and the daemon started once more."""
        for attempt in range(3):
            try:
                return self._start(wait, extra_env, config_arg, wrapper)
            except RuntimeError as e:
                if "is already in use by another program" not in str(e) or attempt == 2:
                    raise
                self._repick_ports()
        raise AssertionError("unreachable")

    def _repick_ports(self) -> None:
        text = self.config.read_text()
        fresh = free_ports(len(self.ports))
        for (svc, old), new in zip(list(self.ports.items()), fresh, strict=True):
            text = text.replace(f'"127.0.0.1:{old}"', f'"127.0.0.1:{new}"')
            self.ports[svc] = new
        self.config.write_text(text)

    def _start(self, wait: float, extra_env: dict[str, str] | None, config_arg: bool,
               wrapper: list[str] | None) -> float:
        t0 = time.monotonic()
        if forkserver.ENABLED and wrapper is None:
            self.proc = forkserver.start_twistd(
                ["-n", "--pidfile=", "exmaild"]
                + (["--config", str(self.config)] if config_arg else []),
                env={**env(), **(extra_env or {})}, cwd=str(self.cwd), log=str(self.log))
        else:
            self.proc = subprocess.Popen(
                (wrapper or [])
                + [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "exmaild"]
                + (["--config", str(self.config)] if config_arg else []),
                cwd=self.cwd, env={**env(), **(extra_env or {})}, stdout=open(self.log, "ab"),
                stderr=subprocess.STDOUT,
            )
        while time.monotonic() - t0 < wait:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.output()}")
            try:
                self.health()
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
        self.kill()  # no orphan left holding the ports (or workers restarting)
        raise RuntimeError(f"daemon did not answer /healthz: {self.output()}")

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.ports['admin']}/healthz"
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once `text` is in it (lines are written every 0.25 s)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if text in out or time.monotonic() > deadline:
                return out
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon and, with `[server] workers`, its workers (they
        would stop once their pipe closes; this does not wait for that)."""
        from .workerutil import children

        if self.proc is not None and self.proc.poll() is None:
            kids = children(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def exmailctl(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if forkserver.ENABLED:
        return forkserver.run("cli", ["--config", str(config), *args], env=env(), stdin=stdin)
    return subprocess.run(
        [sys.executable, "-m", "exmaild.cli", "--config", str(config), *args],
        input=stdin, capture_output=True, text=True, env=env(), timeout=60,
    )

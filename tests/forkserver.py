"""Run `exmailctl` and the daemon as forks of a process that has already
imported exmaild.

Each `python -m exmaild.cli` or twistd start used to spend about a second
importing Twisted, SQLAlchemy and exmaild, and the suite starts a few hundred
of them. The zygote pays that once per test process. Every request forks a
child that runs the real entry point (`exmaild.cli.main`, twistd's `run`)
with its own argv, environment, working directory and standard streams, so
the child is the process `python -m exmaild.cli` would have been, minus the
imports. The zygote never starts a reactor or a thread (checked at start),
so no child inherits an event loop or a half-held lock.

Set EXMAILD_TEST_FORKSERVER=0 to spawn fresh interpreters instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENABLED = os.environ.get("EXMAILD_TEST_FORKSERVER", "1") != "0"
CLI_ARGV0 = "exmaild/cli.py"  # what `python -m exmaild.cli` puts in sys.argv[0]


# --- the zygote (runs as `python -m tests.forkserver SOCKET`) ---------------

def _preload() -> None:
    import importlib
    import pkgutil

    from twisted.scripts import twistd  # noqa: F401

    import exmaild
    import twisted.plugins.exmaild_plugin  # noqa: F401

    for m in pkgutil.walk_packages(exmaild.__path__, "exmaild."):
        importlib.import_module(m.name)
    import threading

    # A reactor or a thread here would be shared by, or half-copied into,
    # every child.
    assert "twisted.internet.reactor" not in sys.modules, "preload installed a reactor"
    assert threading.active_count() == 1, "preload started a thread"


def _child(req: dict[str, Any]) -> None:
    """In the forked child: become the requested process, never return."""
    rc = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(req["cwd"])
        stdin = os.open(req.get("stdin") or os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        err = (os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
               if req.get("stderr") else out)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        enc, errors = sys.stdout.encoding, sys.stdout.errors
        sys.stdin = open(0, encoding=enc, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding=enc, errors=errors, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding=enc, errors="backslashreplace",  # noqa: SIM115
                          closefd=False, buffering=1)
        os.environ.clear()
        os.environ.update(req["env"])
        import random

        random.seed()  # siblings must not share the zygote's random state
        sys.argv = list(req["argv"])
        try:
            if req["kind"] == "cli":
                from exmaild.cli import main

                rc = main(sys.argv[1:])
            else:
                from twisted.scripts.twistd import run

                run()
                rc = 0
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except BaseException:
            import traceback

            traceback.print_exc()
            rc = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what interpreter shutdown would run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc & 0xFF if rc >= 0 else 1)


def serve(path: str) -> None:
    _preload()
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while os.getppid() == parent:
        for key, _ in sel.select(1.0):
            if key.fileobj is lsock:
                conn, _ = lsock.accept()
                req = json.loads(conn.makefile("rb").readline())
                pid = os.fork()
                if pid == 0:
                    _child(req)
                waiting[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            else:
                os.read(wake_r, 4096)
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps(
                        {"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


# --- the test side -------------------------------------------------------------

class ForkedProcess:
    """The parts of subprocess.Popen the tests use, for a zygote's child."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self._conn, self.pid = conn, pid
        self._file = conn.makefile("rb")
        self.returncode: int | None = None

    def _read_rc(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return None
        line = self._file.readline()  # the zygote sends the whole line at once
        self.returncode = json.loads(line)["rc"] if line else -9
        self._file.close()
        self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._read_rc(0.0)

    def wait(self, timeout: float | None = None) -> int:
        rc = self._read_rc(timeout)
        if rc is None:
            raise subprocess.TimeoutExpired(["forked"], timeout or 0)
        return rc

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Zygote:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="exmaild-zygote-")
        self.path = os.path.join(self.dir, "s")
        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", self.path], cwd=repo, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the exmaild fork server did not start")
        atexit.register(self.close)

    def spawn(self, kind: str, argv: list[str], *, env: dict[str, str], cwd: str,
              stdout: str, stderr: str | None = None, stdin: str | None = None
              ) -> ForkedProcess:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(self.path)
        req = {"kind": kind, "argv": argv, "env": env, "cwd": cwd, "stdout": stdout,
               "stderr": stderr, "stdin": stdin}
        conn.sendall(json.dumps(req).encode() + b"\n")
        f = conn.makefile("rb")
        pid = json.loads(f.readline())["pid"]
        f.close()
        return ForkedProcess(conn, pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_zygote: _Zygote | None = None


def zygote() -> _Zygote:
    global _zygote
    if _zygote is None or _zygote.proc.poll() is not None:
        _zygote = _Zygote()
    return _zygote


def run(kind: str, args: list[str], *, env: dict[str, str], cwd: str | None = None,
        stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Like subprocess.run(COMMAND + args, text=True, capture_output=True),
    where COMMAND is `python -m exmaild.cli` (kind "cli") or twistd's
    `python -c 'from twisted.scripts.twistd import run; run()'` (kind "twistd")."""
    with tempfile.TemporaryDirectory(prefix="exmaild-run-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        inp = None
        if stdin is not None:
            inp = os.path.join(tmp, "in")
            Path(inp).write_text(stdin)
        argv0 = CLI_ARGV0 if kind == "cli" else "-c"
        proc = zygote().spawn(kind, [argv0, *args], env=env, cwd=cwd or os.getcwd(),
                              stdout=out, stderr=err, stdin=inp)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

        def read(p: str) -> str:
            return Path(p).read_text(errors="replace") if os.path.exists(p) else ""

        return subprocess.CompletedProcess([kind, *args], rc, read(out), read(err))


def start_twistd(args: list[str], *, env: dict[str, str], cwd: str, log: str
                 ) -> ForkedProcess:
    """`python -c 'from twisted.scripts.twistd import run; run()' ARGS`,
    stdout and stderr appended to `log`."""
    return zygote().spawn("twistd", ["-c", *args], env=env, cwd=cwd, stdout=log)


def wait_exit(proc: ForkedProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (rc := proc.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc.wait(0.1) if rc is None else rc


if __name__ == "__main__":
    serve(sys.argv[1])

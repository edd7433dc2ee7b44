"""Loopback Dovecot 2.3 + Postfix 3.7 lab, run beside exmaild in benchmarks.

Configs come from the read-only lab folder (``<repo>/../shared/lab``, or
``$EXMAILD_LAB_DIR``); paths there say ``@LAB@``. Must run as root.

    with Lab(users=["user1@example.test"]) as lab:
        lab.load_maildir("user1@example.test", messages)   # Dovecot INBOX
        lab.warm("user1@example.test")                    # let Dovecot index it
        ... lab.imap_port, lab.pop3_port, lab.smtp_port ...
        lab.count_delivered("user1@example.test")         # Postfix deliveries

CLI: ``python3 bench/lab.py start|stop|status [--dir D] [--user U ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HOST = "127.0.0.1"
PASSWORD = "pass"
DOMAIN = "example.test"  # the only virtual_mailbox_domains entry in main.cf
DEFAULT_USERS = ("user1@example.test",)
IMAP_PORT, POP3_PORT, SMTP_PORT = 10143, 10110, 10025
CURRENT = Path(tempfile.gettempdir()) / "exmaild-lab.current"  # last dir the CLI started


def config_source() -> Path:
    """The read-only folder holding dovecot.conf, main.cf, master.cf."""
    env = os.environ.get("EXMAILD_LAB_DIR")
    src = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "lab"
    if not (src / "dovecot.conf").is_file():
        raise FileNotFoundError(f"lab configs not found in {src} (set EXMAILD_LAB_DIR)")
    return src


def _ids(name: str) -> tuple[int, int]:
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def _mkdir(path: Path, owner: tuple[int, int] | None = None, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner:
        os.chown(path, *owner)
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (for parallel labs)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _banner(port: int, timeout: float = 1.0) -> bytes:
    """First line a server sends on connect; b"" if nothing listens."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            return s.recv(512)
    except OSError:
        return b""


def _wait(cond, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _run(cmd: Sequence[str], tty: bool = False) -> str:
    """Run a command, raise with its output on failure. ``tty``: under script(1)."""
    argv = ["script", "-qec", " ".join(cmd), "/dev/null"] if tty else list(cmd)
    # a file, not a pipe: daemons inherit it and would keep a pipe open forever
    with tempfile.TemporaryFile() as log:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.seek(0)
        out = log.read().decode(errors="replace").strip()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {out}")
    return out


class Lab:
    """One Dovecot + one Postfix instance under a lab directory."""

    def __init__(self, users: Iterable[str] = DEFAULT_USERS, dir: str | Path | None = None,
                 *, keep: bool | None = None, password: str = PASSWORD,
                 imap_port: int = IMAP_PORT, pop3_port: int = POP3_PORT,
                 smtp_port: int = SMTP_PORT,
                 services: Iterable[str] = ("dovecot", "postfix")) -> None:
        self.users = list(users)
        self.services = set(services)
        if not self.services <= {"dovecot", "postfix"}:
            raise ValueError(f"unknown services: {self.services}")
        for u in self.users:
            if not u.endswith("@" + DOMAIN):
                raise ValueError(f"lab users must be @{DOMAIN}: {u}")
        self.dir = Path(dir or tempfile.mkdtemp(prefix="exmaild-lab-")).resolve()
        self.keep = (dir is not None) if keep is None else keep  # temp dirs go by default
        self.password = password
        self.host = HOST
        self.imap_port, self.pop3_port, self.smtp_port = imap_port, pop3_port, smtp_port
        self.dovecot_conf = self.dir / "dovecot" / "dovecot.conf"
        self.postfix_etc = self.dir / "postfix" / "etc"

    # ------------------------------------------------------------ paths
    def maildir(self, user: str, mailbox: str = "INBOX") -> Path:
        """The Maildir Dovecot serves for ``user`` (INBOX, or a Maildir++ folder)."""
        local, domain = user.split("@")
        root = self.dir / "dovecot-mail" / domain / local / "Maildir"
        return root if mailbox.upper() == "INBOX" else root / ("." + mailbox.replace("/", "."))

    def delivery_maildir(self, user: str) -> Path:
        """The Maildir Postfix virtual(8) delivers ``user``'s mail into."""
        return self.dir / "postfix-mail" / user.split("@")[0] / "Maildir"

    # ------------------------------------------------------------ layout
    def layout(self) -> None:
        """Create directories, users and configs (idempotent)."""
        src = config_source()
        mail = _ids("mail")
        postfix = _ids("postfix")
        _mkdir(self.dir)  # mail processes (uid mail) must traverse it
        for sub in ("run", "state", "log"):
            _mkdir(self.dir / "dovecot" / sub)
        _mkdir(self.dir / "dovecot-mail", mail)
        _mkdir(self.dir / "postfix-mail", mail)
        _mkdir(self.postfix_etc)
        _mkdir(self.dir / "postfix" / "spool")
        _mkdir(self.dir / "postfix" / "data", postfix, 0o700)
        _mkdir(self.dir / "postfix" / "log")
        self._write(self.dovecot_conf, self._config(src / "dovecot.conf"))
        self._write(self.postfix_etc / "main.cf", self._config(src / "main.cf"))
        self._write(self.postfix_etc / "master.cf", self._config(src / "master.cf"))
        self._write(self.dir / "dovecot" / "users.passwd",
                    "".join(f"{u}:{{PLAIN}}{self.password}\n" for u in self.users))
        self._write(self.postfix_etc / "vmailbox",
                    "".join(f"{u} {u.split('@')[0]}/Maildir/\n" for u in self.users))
        for u in self.users:
            self._make_maildir(self.maildir(u))
            self._make_maildir(self.delivery_maildir(u))

    def _config(self, path: Path) -> str:
        text = path.read_text().replace("@LAB@", str(self.dir))
        return (text.replace("port = 10143", f"port = {self.imap_port}")
                .replace("port = 10110", f"port = {self.pop3_port}")
                .replace("127.0.0.1:10025 ", f"127.0.0.1:{self.smtp_port} "))

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        os.chmod(path, 0o644)

    @staticmethod
    def _make_maildir(root: Path) -> None:
        mail = _ids("mail")
        _mkdir(root.parent, mail, 0o700)
        for sub in ("", "cur", "new", "tmp"):
            _mkdir(root / sub, mail, 0o700)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> Lab:
        running = self.status()
        if any(running.values()):
            raise RuntimeError(f"lab at {self.dir} already (partly) running: {running}")
        listeners = self._listeners()
        for port, _ in listeners:
            if _listening(port):
                raise RuntimeError(f"port {port} already in use by another server")
        self.layout()
        try:
            if "dovecot" in self.services:
                _run(["dovecot", "-c", str(self.dovecot_conf)])
            if "postfix" in self.services:
                _run(["postfix", "-c", str(self.postfix_etc), "start"], tty=True)
            for port, greeting in listeners:
                _wait(lambda p=port, g=greeting: _banner(p).startswith(g), timeout,
                      f"port {port} to answer {greeting.decode()} (logs: {self.dir})")
        except BaseException:
            self.stop()
            raise
        return self

    def _listeners(self) -> list[tuple[int, bytes]]:
        """(port, greeting) of every service this lab runs."""
        out = []
        if "dovecot" in self.services:
            out += [(self.imap_port, b"* OK"), (self.pop3_port, b"+OK")]
        if "postfix" in self.services:
            out.append((self.smtp_port, b"220"))
        return out

    def stop(self, timeout: float = 30.0) -> None:
        """Stop both servers and wait until their master processes are gone."""
        errors = []
        if _pid_alive(self._dovecot_pid()):
            try:
                _run(["doveadm", "-c", str(self.dovecot_conf), "stop"])
            except RuntimeError as e:
                errors.append(str(e))
        if _pid_alive(self._postfix_pid()):
            try:
                _run(["postfix", "-c", str(self.postfix_etc), "stop"], tty=True)
            except RuntimeError as e:
                errors.append(str(e))
        _wait(lambda: not any(self.status().values()), timeout, "lab servers to stop")
        if errors:
            raise RuntimeError("; ".join(errors))

    def status(self) -> dict[str, bool]:
        return {"dovecot": _pid_alive(self._dovecot_pid()) is not None,
                "postfix": _pid_alive(self._postfix_pid()) is not None}

    def _dovecot_pid(self) -> Path:
        return self.dir / "dovecot" / "run" / "master.pid"

    def _postfix_pid(self) -> Path:
        return self.dir / "postfix" / "spool" / "pid" / "master.pid"

    def __enter__(self) -> Lab:
        try:
            return self.start()
        except BaseException:
            self._cleanup()  # __exit__ is not called when __enter__ raises
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if not self.keep and not any(self.status().values()):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ mail
    def reset_maildir(self, user: str) -> None:
        """Empty ``user``'s Dovecot mail (messages, folders and indexes)."""
        root = self.maildir(user)
        shutil.rmtree(root, ignore_errors=True)
        self._make_maildir(root)

    def load_maildir(self, user: str, messages: Iterable[bytes], mailbox: str = "INBOX",
                     subdir: str = "cur", flags: str = "", lf: bool = True) -> int:
        """Write messages straight into ``user``'s Maildir (``cur`` or ``new``).

        Files are named as Dovecot names its own (``,S=<size>,W=<crlf size>``) and,
        with ``lf``, stored with LF endings as Dovecot itself does. Returns the count.
        """
        root = self.maildir(user, mailbox)
        if not root.is_dir():
            self._make_maildir(root)
            (root / "maildirfolder").touch()
        uid, gid = _ids("mail")
        stamp = int(time.time()) - 10**6
        suffix = ":2," + flags if subdir == "cur" else ""
        count = 0
        for count, msg in enumerate(messages, 1):
            vsize = len(msg) + msg.count(b"\n") - msg.count(b"\r\n")
            data = msg.replace(b"\r\n", b"\n") if lf else msg
            name = f"{stamp + count}.M{count:06d}P{os.getpid()}.lab,S={len(data)},W={vsize}"
            fd = os.open(root / subdir / (name + suffix), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            try:
                os.write(fd, data)
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
            os.utime(root / subdir / (name + suffix), (stamp + count, stamp + count))
        return count

    def warm(self, user: str, mailbox: str = "INBOX") -> float:
        """One SELECT + FETCH FLAGS so Dovecot builds its index; returns the seconds taken."""
        t0 = time.perf_counter()
        imap = imaplib.IMAP4(self.host, self.imap_port)
        try:
            imap.login(user, self.password)
            typ, data = imap.select(mailbox, readonly=True)
            if typ != "OK":
                raise RuntimeError(f"SELECT {mailbox} failed: {data}")
            if int(data[0]):
                imap.fetch("1:*", "(FLAGS)")
        finally:
            with contextlib.suppress(OSError):
                imap.logout()  # also closes the socket
        return time.perf_counter() - t0

    def count_delivered(self, user: str) -> int:
        """Messages Postfix has delivered into ``user``'s Maildir (new + cur)."""
        root = self.delivery_maildir(user)
        return sum(len(os.listdir(root / sub)) for sub in ("new", "cur"))

    def clear_delivered(self, user: str) -> None:
        root = self.delivery_maildir(user)
        for sub in ("new", "cur"):
            for name in os.listdir(root / sub):
                os.unlink(root / sub / name)


# ---------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--dir", help="lab directory (default: new temp dir on start, "
                                  f"else the last one started, see {CURRENT})")
    ap.add_argument("--user", action="append", help="user to create (repeatable)")
    ap.add_argument("--rm", action="store_true", help="stop: also delete the lab directory")
    ap.add_argument("--free-ports", action="store_true",
                    help=f"start: pick free ports instead of {IMAP_PORT}/{POP3_PORT}/{SMTP_PORT}")
    args = ap.parse_args(argv)
    d = args.dir
    if d is None and args.action != "start":
        if not CURRENT.is_file():
            ap.error("no --dir given and no lab started from the CLI")
        d = CURRENT.read_text().strip()
    ports = ({"imap_port": free_port(), "pop3_port": free_port(), "smtp_port": free_port()}
             if args.free_ports else {})
    lab = Lab(args.user or DEFAULT_USERS, d, keep=True, **ports)
    if args.action == "start":
        lab.start()
        CURRENT.write_text(f"{lab.dir}\n")
        print(f"lab dir {lab.dir}\nIMAP {HOST}:{lab.imap_port}  POP3 {HOST}:{lab.pop3_port}  "
              f"SMTP {HOST}:{lab.smtp_port}  users {', '.join(lab.users)} / {lab.password}")
    elif args.action == "stop":
        lab.stop()
        if args.rm:
            shutil.rmtree(lab.dir, ignore_errors=True)
        if CURRENT.is_file() and CURRENT.read_text().strip() == str(lab.dir):
            CURRENT.unlink()
        print(f"stopped lab {lab.dir}")
    else:
        st = lab.status()
        print(f"lab {lab.dir}: " + ", ".join(f"{k} {'running' if v else 'stopped'}"
                                             for k, v in st.items()))
        return 0 if all(st.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

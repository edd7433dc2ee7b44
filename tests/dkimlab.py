"""DKIM test helpers: the DNS record exmailctl prints, a threaded TXT server
on 127.0.0.1 for a daemon, and OpenDKIM's verifier run against our records."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset

OPENDKIM_TESTMSG = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
TXTSERVER = Path(__file__).with_name("txtserver.py")


def parse_dns_line(line: str) -> tuple[str, str]:
    """`NAME. IN TXT "a" "b"` -> (NAME without the dot, "ab")."""
    m = re.fullmatch(r'(\S+)\. IN TXT ((?:"[^"]*" ?)+)', line.strip())
    assert m, line
    return m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))


def quoted(value: str) -> str:
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


class ThreadDNS:
    """TXT answers from `records` (name -> value) on 127.0.0.1, in a thread."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.ttl = 0  # tests change records; the benchmark sets a real TTL
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text(omit_final_dot=True).lower()
            resp = dns.message.make_response(q)
            if name in self.records and q.question[0].rdtype == 16:
                resp.answer.append(dns.rrset.from_text_list(
                    q.question[0].name, self.ttl, "IN", "TXT", [quoted(self.records[name])]))
            else:  # with a SOA, so resolvers cache the NXDOMAIN only `ttl` seconds
                resp.set_rcode(dns.rcode.NXDOMAIN)
                resp.authority.append(dns.rrset.from_text(
                    "test.", self.ttl, "IN", "SOA", f"ns.test. h.test. 1 60 60 60 {self.ttl}"))
            self.sock.sendto(resp.to_wire(), addr)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def opendkim_available() -> str | None:
    """None if OpenDKIM's verifier can run here, else why not."""
    if not Path(OPENDKIM_TESTMSG).exists():
        return "opendkim-testmsg missing (Debian opendkim-tools)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare or ip missing"
    probe = subprocess.run(["unshare", "-mn", "true"], capture_output=True)
    if probe.returncode != 0:
        return "cannot make a network namespace (needs root)"
    return None


def opendkim_verify(message: bytes, records: dict[str, str], tmp: Path) -> tuple[int, str]:
    """(exit status, stderr) of `opendkim-testmsg` verifying `message`, with DNS
    answered from `records` by a server inside a private network namespace
    whose /etc/resolv.conf (bind-mounted there only) points at it."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "records.json").write_text(json.dumps({k: quoted(v) for k, v in records.items()}))
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (tmp / "message").write_bytes(message)
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    script = (
        "set -e; ip link set lo up; mount --bind resolv.conf /etc/resolv.conf; "
        f"{sys.executable} {TXTSERVER} records.json ready & server=$!; "
        "for i in $(seq 100); do [ -e ready ] && break; sleep 0.05; done; "
        f"set +e; {OPENDKIM_TESTMSG} < message; rc=$?; kill $server; exit $rc"
    )
    p = subprocess.run(["unshare", "-mn", "sh", "-c", script], cwd=tmp, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stderr

"""Many IMAP sessions arriving at once (LOGIN, SELECT INBOX, IDLE), over raw
asyncio sockets: for tests/test_imap_crowd.py and bench/imap_sessions.py."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass, field

STEPS = ("connected", "greeting", "login", "select", "idle")


@dataclass
class Crowd:
    sessions: int
    elapsed: float = 0.0
    reached: dict[str, list[float]] = field(
        default_factory=lambda: {s: [] for s in STEPS})  # seconds from the start
    refused: Counter = field(default_factory=Counter)  # "step: server's words" -> sessions

    @property
    def stuck(self) -> int:
        """Sessions with neither IDLE nor a refusal: nobody answered them."""
        return self.sessions - len(self.reached["idle"]) - sum(self.refused.values())


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


async def _session(port: int, user: str, password: str, crowd: Crowd, t0: list[float],
                   go: asyncio.Event) -> None:
    await go.wait()

    def note(step: str) -> None:
        crowd.reached[step].append(time.monotonic() - t0[0])

    def refuse(step: str, line: bytes) -> None:
        crowd.refused[f"{step}: {line.decode(errors='replace').strip()[:80]}"] += 1

    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        crowd.refused[f"connect: {e.__class__.__name__}"] += 1
        return
    note("connected")
    try:
        line = await r.readline()
        if not line.startswith(b"* OK"):
            refuse("greeting", line or b"closed by server")
            return
        note("greeting")
        for step, cmd in (("login", f"a LOGIN {user} {password}"), ("select", "b SELECT INBOX"),
                          ("idle", "c IDLE")):
            w.write(cmd.encode() + b"\r\n")
            await w.drain()
            tag = cmd.split()[0].encode()
            while True:
                line = await r.readline()
                if not line or line.startswith(b"* BYE"):
                    refuse(step, line or b"closed by server")
                    return
                if line.startswith(tag + b" ") or (tag == b"c" and line.startswith(b"+")):
                    break
            if tag != b"c" and not line.startswith(tag + b" OK"):
                refuse(step, line)
                return
            note(step)
        await asyncio.Event().wait()  # stay in IDLE until cancelled
    except OSError as e:
        crowd.refused[f"error: {e.__class__.__name__}"] += 1
    finally:
        w.close()


async def crowd(port: int, user: str, password: str, sessions: int,
                timeout: float) -> Crowd:
    """`sessions` sessions started at the same moment; returns once each is in
    IDLE or was refused, or when `timeout` seconds have passed (the rest are
    `stuck`). The sessions are closed before it returns."""
    raise_nofile(sessions + 256)
    result = Crowd(sessions)
    go, t0 = asyncio.Event(), [0.0]
    tasks = [asyncio.create_task(_session(port, user, password, result, t0, go))
             for _ in range(sessions)]
    await asyncio.sleep(0.1)  # every task waits at the gate
    t0[0] = time.monotonic()
    go.set()
    while result.stuck and time.monotonic() - t0[0] < timeout:
        await asyncio.sleep(0.05)
    result.elapsed = time.monotonic() - t0[0]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result

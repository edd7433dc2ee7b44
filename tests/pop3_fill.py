"""Fill a daemon's store before it starts: `python -m tests.pop3_fill CONFIG ADDRESS PASSWORD`
with the messages pickled on stdin. Runs its own reactor, so it is a separate
process; it uses the one ingest path, as SMTP delivery will."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from argon2 import PasswordHasher
from twisted.internet import defer, task

from exmaild.config import load_config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.service import MailStore


async def fill(reactor: object, config: Path, address: str, password: str,
               messages: list[bytes]) -> None:
    store = MailStore(load_config(str(config)), reactor)
    store.open()
    store.startService()
    try:
        domain = address.split("@")[1]
        if await store.directory.get_domain(domain) is None:
            await store.directory.add_domain(domain)
        cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)
        acct = await store.directory.add_account(address, cheap)
        await defer.gatherResults([
            defer.Deferred.fromCoroutine(store.ingestor.ingest(
                IngestRequest(raw, [Target(acct.id, "INBOX")])))
            for raw in messages
        ], consumeErrors=True)
    finally:
        store.stopService()


def main() -> None:
    config, address, password = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    messages = pickle.load(sys.stdin.buffer)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        fill(reactor, config, address, password, messages)))


if __name__ == "__main__":
    main()

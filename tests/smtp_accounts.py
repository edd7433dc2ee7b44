"""Create a domain's accounts before a daemon starts, in one process with cheap
argon2 hashes: `python -m tests.smtp_accounts CONFIG PASSWORD ADDRESS...`."""

from __future__ import annotations

import sys

from argon2 import PasswordHasher
from twisted.internet import defer, task

from exmaild.config import load_config
from exmaild.store.connector import Store


async def create(reactor: object, config: str, password: str, addresses: list[str]) -> None:
    store = Store(load_config(config), reactor)
    store.open()
    store.startService()
    try:
        cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)
        for address in addresses:
            domain = address.split("@")[1]
            if await store.directory.get_domain(domain) is None:
                await store.directory.add_domain(domain)
            await store.directory.add_account(address, cheap)
    finally:
        store.stopService()


def main() -> None:
    config, password, *addresses = sys.argv[1:]
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        create(reactor, config, password, addresses)))


if __name__ == "__main__":
    main()

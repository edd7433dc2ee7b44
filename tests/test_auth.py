"""The account authenticator: argon2 on its own threads, verified passwords
remembered (in memory, as a keyed hash) until the TTL or a password change."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted

from exmaild.auth import checker, passwords
from exmaild.auth.checker import AccountAuthenticator, AuthFailed
from exmaild.auth.passwords import hash_password
from exmaild.store.connector import Store

ADDRESS = "carol@example.test"


async def account(store: Store, password: str) -> None:
    await store.directory.add_domain("example.test")
    await store.directory.add_account(ADDRESS, hash_password(password))


@pytest.fixture
def verify_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads each argon2 verification ran on."""
    seen: list[str] = []
    real = checker.verify_password

    def recording(stored: str | None, password: str) -> bool:
        seen.append(threading.current_thread().name)
        return real(stored, password)

    monkeypatch.setattr(checker, "verify_password", recording)
    return seen


@pytest_twisted.ensureDeferred
async def test_a_verified_password_skips_argon2_until_it_changes(
    store: Store, verify_threads: list[str]
) -> None:
    await account(store, "First-pass-1")
    auth = AccountAuthenticator(store, cache_ttl=3600)
    for _ in range(3):
        assert (await auth.authenticate(ADDRESS, "First-pass-1")).address == ADDRESS
    assert len(verify_threads) == 1  # the first login only
    # Argon2 runs on the auth pool, not on the database threads.
    assert all("exmaild-auth" in name for name in verify_threads)
    with pytest.raises(AuthFailed):  # a wrong password is always verified
        await auth.authenticate(ADDRESS, "Wrong-pass-1")
    assert len(verify_threads) == 2
    # A new password ends what was remembered for the old one.
    await store.directory.set_password(ADDRESS, hash_password("Second-pass-2"))
    with pytest.raises(AuthFailed):
        await auth.authenticate(ADDRESS, "First-pass-1")
    assert (await auth.authenticate(ADDRESS, "Second-pass-2")).address == ADDRESS
    assert len(verify_threads) == 4


@pytest_twisted.ensureDeferred
async def test_cache_off_and_expired_entries_verify_again(
    store: Store, verify_threads: list[str]
) -> None:
    await account(store, "First-pass-1")
    off = AccountAuthenticator(store, cache_ttl=0)
    await off.authenticate(ADDRESS, "First-pass-1")
    await off.authenticate(ADDRESS, "First-pass-1")
    assert len(verify_threads) == 2
    on = AccountAuthenticator(store, cache_ttl=3600)
    await on.authenticate(ADDRESS, "First-pass-1")
    for key, (mac, _) in list(on._verified.items()):
        on._verified[key] = (mac, 0.0)  # expired
    await on.authenticate(ADDRESS, "First-pass-1")
    assert len(verify_threads) == 4


@pytest_twisted.ensureDeferred
async def test_disabled_account_fails_even_when_remembered(store: Store) -> None:
    await account(store, "First-pass-1")
    auth = AccountAuthenticator(store)
    await auth.authenticate(ADDRESS, "First-pass-1")
    await store.directory.set_enabled(ADDRESS, False)
    with pytest.raises(AuthFailed) as e:
        await auth.authenticate(ADDRESS, "First-pass-1")
    assert e.value.reason == "account disabled"


@pytest_twisted.ensureDeferred
async def test_simultaneous_logins_share_one_verification(
    store: Store, verify_threads: list[str]
) -> None:
    from twisted.internet import defer

    from exmaild.config import AuthConfig

    # The production cost, so that the checks really overlap.
    passwords.configure(AuthConfig())
    await account(store, "First-pass-1")
    auth = AccountAuthenticator(store)

    def login(password: str) -> defer.Deferred[object]:
        return defer.Deferred.fromCoroutine(auth.authenticate(ADDRESS, password))

    results = await defer.DeferredList(
        [login("First-pass-1") for _ in range(10)] + [login("Wrong-pass-1") for _ in range(3)],
        consumeErrors=True,
    )
    assert [ok for ok, _ in results] == [True] * 10 + [False] * 3
    assert len(verify_threads) == 2  # one for the right password, one for the wrong one


def _params(stored: str) -> str:
    """`argon2id$v=19$m=..,t=..,p=..` of a PHC string."""
    return "$".join(stored.split("$")[1:4])


@pytest_twisted.ensureDeferred
async def test_a_login_rehashes_an_older_hash_with_the_current_parameters(store: Store) -> None:
    from argon2 import PasswordHasher, Type

    from exmaild.config import AuthConfig

    await store.directory.add_domain("example.test")
    old = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("First-pass-1")
    await store.directory.add_account(ADDRESS, old)
    passwords.configure(AuthConfig(argon2_time_cost=2, argon2_memory_kib=2048,
                                   argon2_parallelism=2))
    auth = AccountAuthenticator(store)
    with pytest.raises(AuthFailed):  # a wrong password changes nothing
        await auth.authenticate(ADDRESS, "Wrong-pass-1")
    assert (await store.directory.get_account(ADDRESS)).password_hash == old
    acct = await auth.authenticate(ADDRESS, "First-pass-1")
    stored = (await store.directory.get_account(ADDRESS)).password_hash
    assert stored is not None and stored != old and acct.password_hash == stored
    assert _params(stored) == "argon2id$v=19$m=2048,t=2,p=2"
    assert passwords.verify_password(stored, "First-pass-1")
    # Remembered under the new hash; a second node (its own cache) reads the new hash.
    other = AccountAuthenticator(store)
    for a in (auth, other):
        assert (await a.authenticate(ADDRESS, "First-pass-1")).address == ADDRESS
    assert (await store.directory.get_account(ADDRESS)).password_hash == stored
    # argon2i (another variant) is upgraded to argon2id too.
    argon2i = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=2,
                             type=Type.I).hash("First-pass-1")
    await store.directory.set_password(ADDRESS, argon2i)
    await auth.authenticate(ADDRESS, "First-pass-1")
    stored = (await store.directory.get_account(ADDRESS)).password_hash
    assert stored is not None and _params(stored) == "argon2id$v=19$m=2048,t=2,p=2"
    # A password change meanwhile wins over a rehash of the old password.
    await store.directory.set_password(ADDRESS, hash_password("Second-pass-2"))
    acct = await store.directory.get_account(ADDRESS)
    assert not await store.directory.replace_password_hash(acct.id, stored, "x")
    assert (await store.directory.get_account(ADDRESS)).password_hash == acct.password_hash


@pytest_twisted.ensureDeferred
async def test_a_password_change_ends_the_cache_of_every_node(
    store: Store, verify_threads: list[str]
) -> None:
    await account(store, "First-pass-1")
    nodes = [AccountAuthenticator(store, cache_ttl=3600) for _ in range(2)]
    for node in nodes:
        await node.authenticate(ADDRESS, "First-pass-1")
        await node.authenticate(ADDRESS, "First-pass-1")
    assert len(verify_threads) == 2  # once per node, then remembered
    await store.directory.set_password(ADDRESS, hash_password("Second-pass-2"))
    for node in nodes:
        with pytest.raises(AuthFailed):
            await node.authenticate(ADDRESS, "First-pass-1")
        assert (await node.authenticate(ADDRESS, "Second-pass-2")).address == ADDRESS

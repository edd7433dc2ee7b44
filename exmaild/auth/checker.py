"""Account authentication shared by SMTP AUTH, IMAP LOGIN and POP3 USER/PASS.

A twisted.cred checker (so a Portal can use it) plus a direct async
`authenticate()` the protocols call. Argon2 verification is deliberately slow
(~0.1 s of CPU), so it runs on a thread pool of its own: not the reactor
thread, and not the database threads, which a storm of logins (every phone
reconnecting after a restart) would otherwise keep from delivering mail.

A password that verified is remembered for `[auth] cache_ttl` seconds as an
HMAC under a key made at start-up, in memory only, keyed by the account and
its stored hash, so a client's next connections skip argon2 and a password
change ends the entry at once. Failures are never cached. Dovecot's auth
cache does the same. Every login reads the account's stored hash from the
store, so a password changed on any node (API, exmailctl) ends the entries of
every node at that account's next login: the store is the version stamp.

A password that verified against a hash made with older argon2 parameters
is rehashed with the current ones (`[auth] argon2_*`) and stored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from exmaild.auth.passwords import hash_password, needs_rehash, parameters, verify_password
from exmaild.store.records import Account

if TYPE_CHECKING:
    from exmaild.store.connector import Store

log = Logger()


class AuthFailed(Exception):
    """Wrong user or password, or a disabled account; `reason` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MustChangePassword(AuthFailed):
    """Right password, but an admin reset it: the member must set a new one
    through the self-service API before any protocol login works. Unlike
    other failures its reason may be told to the client (the password was
    right)."""

    TEXT = "password must be changed: set a new one at /api/v1/me/password"

    def __init__(self) -> None:
        super().__init__("password must be changed")


@implementer(ICredentialsChecker)
class AccountAuthenticator:
    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, store: Store, *, threads: int = 2, cache_ttl: int = 3600) -> None:
        self.store = store
        self.cache_ttl = cache_ttl
        self._threads = threads
        self._key = os.urandom(32)
        # (account id or ("app", id), stored hash) -> (HMAC of the password, expiry)
        self._verified: dict[tuple[Any, str], tuple[bytes, float]] = {}
        self._inflight: dict[tuple[Any, str, bytes], list[defer.Deferred[bool]]] = {}

    async def authenticate(self, username: str, password: str, *,
                           allow_must_change: bool = False) -> Account:
        """The account for these credentials, or AuthFailed (MustChangePassword
        after an admin reset, unless `allow_must_change`: the self-service
        login, where the member sets its new password). Never logs the password."""
        acct = await self.store.directory.get_account(username)
        if acct is None or acct.password_hash is None:
            # Same cost as a real check, so timing does not reveal which users exist.
            await self._verify(_dummy_hash(), password)
            raise AuthFailed("unknown user")
        if not self._remembered(acct, password):
            if not await self._verify_once(acct, password):
                raise AuthFailed("wrong password")
            acct = await self.upgrade(acct, password)
            self._remember(acct, password)
        if not acct.enabled:
            raise AuthFailed("account disabled")
        if acct.must_change_password and not allow_must_change:
            raise MustChangePassword()
        return acct

    async def upgrade(self, acct: Account, password: str) -> Account:
        """Rehash a verified password whose hash has older argon2 parameters.
        Only if the stored hash is still the one verified (a password change
        meanwhile wins); a failure here never fails the login."""
        old = acct.password_hash
        assert old is not None
        if not needs_rehash(old):
            return acct
        try:
            new = await threads.deferToThreadPool(
                self.store.reactor, _auth_pool(self.store.reactor, self._threads),
                hash_password, password)
            if not await self.store.directory.replace_password_hash(acct.id, old, new):
                return acct
        except Exception as e:
            log.warn("could not rehash the password of {user}: {error}",
                     user=acct.address, error=str(e) or type(e).__name__)
            return acct
        log.info("rehashed the password of {user} with the current argon2id parameters "
                 "({params})", user=acct.address,
                 params=", ".join(f"{k}={v}" for k, v in parameters().items()))
        return dataclasses.replace(acct, password_hash=new)

    async def check_secret(self, key: Any, stored_hash: str, password: str) -> bool:
        """Whether `password` matches `stored_hash` (an account's or an app
        password's; `key` names it), through the same cache and single-flight
        as account passwords. A new hash under the same key ends the entry."""
        if self._remembered_key(key, stored_hash, password):
            return True
        if not await self._verify_key(key, stored_hash, password):
            return False
        self._remember_key(key, stored_hash, password)
        return True

    def remembered(self, key: Any, stored_hash: str, password: str) -> bool:
        """A cache-only check: no argon2."""
        return self._remembered_key(key, stored_hash, password)

    async def _verify_once(self, acct: Account, password: str) -> bool:
        assert acct.password_hash is not None
        return await self._verify_key(acct.id, acct.password_hash, password)

    async def _verify_key(self, ident: Any, stored_hash: str, password: str) -> bool:
        """One argon2 check for the same credentials arriving together (a
        client opening several connections at once; every client after a
        restart): the later ones wait for the first one's answer."""
        key = (ident, stored_hash, self._mac(password))
        waiting = self._inflight.get(key)
        if waiting is not None:
            d: defer.Deferred[bool] = defer.Deferred()
            waiting.append(d)
            return await d
        self._inflight[key] = waiters = []
        try:
            ok = await self._verify(stored_hash, password)
        except Exception as e:
            for w in waiters:
                w.errback(e)
            raise
        finally:
            del self._inflight[key]
        for w in waiters:
            w.callback(ok)
        return ok

    async def _verify(self, stored_hash: str, password: str) -> bool:
        reactor = self.store.reactor
        return await threads.deferToThreadPool(
            reactor, _auth_pool(reactor, self._threads), verify_password, stored_hash, password
        )

    def _mac(self, password: str) -> bytes:
        data = password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def _remembered(self, acct: Account, password: str) -> bool:
        return self._remembered_key(acct.id, acct.password_hash or "", password)

    def _remembered_key(self, ident: Any, stored_hash: str, password: str) -> bool:
        entry = self._verified.get((ident, stored_hash))
        if entry is None or entry[1] < time.monotonic():
            return False
        return hmac.compare_digest(entry[0], self._mac(password))

    def _remember(self, acct: Account, password: str) -> None:
        self._remember_key(acct.id, acct.password_hash or "", password)

    def _remember_key(self, ident: Any, stored_hash: str, password: str) -> None:
        if self.cache_ttl <= 0:
            return
        now = time.monotonic()
        if len(self._verified) >= _CACHE_ENTRIES:
            self._verified = {k: v for k, v in self._verified.items() if v[1] >= now}
            if len(self._verified) >= _CACHE_ENTRIES:
                self._verified.clear()
        self._verified[(ident, stored_hash)] = (self._mac(password), now + self.cache_ttl)

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes]:
        async def check() -> bytes:
            user = creds.username
            pw = creds.password
            if isinstance(user, bytes):
                user = user.decode("utf-8", "replace")
            if isinstance(pw, bytes):
                pw = pw.decode("utf-8", "replace")
            try:
                acct = await self.authenticate(user, pw)
            except AuthFailed as e:
                raise error.UnauthorizedLogin(e.reason) from None
            return acct.address.encode()

        return defer.Deferred.fromCoroutine(check())


_CACHE_ENTRIES = 100_000


class _DaemonThreadPool(ThreadPool):
    # A verification still running at exit must not hold the process up.
    threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]


_pool: ThreadPool | None = None


def _auth_pool(reactor: Any, size: int) -> ThreadPool:
    """The process's one pool for argon2, started on first use."""
    global _pool
    if _pool is None:
        _pool = _DaemonThreadPool(minthreads=0, maxthreads=size, name="exmaild-auth")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _pool.stop)
    return _pool

_dummy: tuple[dict[str, int], str] | None = None


def _dummy_hash() -> str:
    """A real hash of a random string with the current parameters: verifying
    against it costs what a real check costs."""
    global _dummy
    if _dummy is None or _dummy[0] != parameters():
        _dummy = (parameters(), hash_password(os.urandom(16).hex()))
    return _dummy[1]

"""Account authentication shared by SMTP AUTH, IMAP LOGIN and POP3 USER/PASS.

A twisted.cred checker (so a Portal can use it) plus a direct async
`authenticate()` the protocols call. Argon2 verification is deliberately slow,
so it runs on the DB thread pool, never on the reactor thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from exmaild.auth.passwords import hash_password, verify_password
from exmaild.store.records import Account

if TYPE_CHECKING:
    from exmaild.store.connector import Store

log = Logger()


class AuthFailed(Exception):
    """Wrong user or password, or a disabled account; `reason` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@implementer(ICredentialsChecker)
class AccountAuthenticator:
    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, username: str, password: str) -> Account:
        """The account for these credentials, or AuthFailed. Never logs the password."""
        acct = await self.store.directory.get_account(username)
        if acct is None or acct.password_hash is None:
            # Same cost as a real check, so timing does not reveal which users exist.
            await self.store.pool.call(verify_password, _DUMMY_HASH, password)
            raise AuthFailed("unknown user")
        ok = await self.store.pool.call(verify_password, acct.password_hash, password)
        if not ok:
            raise AuthFailed("wrong password")
        if not acct.enabled:
            raise AuthFailed("account disabled")
        return acct

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


# A real hash of a random string: verifying against it costs what a real check costs.
_DUMMY_HASH = hash_password(os.urandom(16).hex())

"""What every listener's factory is built from: config, store, TLS, auth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exmaild.auth.checker import AccountAuthenticator
from exmaild.auth.policy import LoginGate
from exmaild.config import Config
from exmaild.mailstore.service import MailStore

if TYPE_CHECKING:
    from exmaild.tlscontext import ServerTLS


@dataclass
class App:
    cfg: Config
    store: MailStore
    reactor: Any
    # The outbound queue runner (exmaild.queue); `kick()` asks it to look for
    # due recipients now, e.g. right after an SMTP transaction queued mail.
    queue: Any = None
    _tls: ServerTLS | None = None
    _auth: AccountAuthenticator | None = None
    _logins: LoginGate | None = None

    @property
    def tls(self) -> ServerTLS:
        if self._tls is None:
            from exmaild.tlscontext import server_context

            self._tls = server_context(self.cfg)
        return self._tls

    @property
    def auth(self) -> AccountAuthenticator:
        if self._auth is None:
            self._auth = AccountAuthenticator(
                self.store, threads=self.cfg.auth.threads, cache_ttl=self.cfg.auth.cache_ttl
            )
        return self._auth

    @property
    def logins(self) -> LoginGate:
        """Every protocol's login goes through this (exmaild/auth/policy.py)."""
        if self._logins is None:
            self._logins = LoginGate(self.store, self.auth, self.cfg.auth)
        return self._logins

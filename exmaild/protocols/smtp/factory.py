"""SMTP listener factories: the MX (`smtp`) and submission (`submission`,
`submissions`) flavours, sharing one directory cache per store."""

from __future__ import annotations

import weakref
from typing import Any

from exmaild.protocols.smtp.policy import DirectoryCache, Policy
from exmaild.protocols.smtp.server import SMTPFactory
from exmaild.protocols.smtp.session import MX, SUBMISSION, SUBMISSIONS, Flavour

FLAVOURS: dict[str, Flavour] = {f.service: f for f in (MX, SUBMISSION, SUBMISSIONS)}
_policies: weakref.WeakKeyDictionary[Any, Policy] = weakref.WeakKeyDictionary()


def policy_for(app: Any) -> Policy:
    """One Policy (and so one lookup cache) per store, shared by the listeners."""
    policy = _policies.get(app.store)
    if policy is None:
        cache = DirectoryCache(app.store, app.reactor.seconds, app.cfg.smtp.lookup_cache_ttl)
        from exmaild.sieve.srs import srs_for

        policy = _policies[app.store] = Policy(cache, app.cfg.server.hostname,
                                               srs=srs_for(app.cfg))
    return policy


def make_factory(app: Any, service: str) -> SMTPFactory:
    return SMTPFactory(app, policy_for(app), FLAVOURS[service])

"""`exmailctl dkim ...`: keys, the records to publish, and a DNS check.

Hooked into exmaild/cli.py's parser by `add_parsers(sub, command)`; the
handlers register through the caller's own `command` decorator (exmailctl
runs as __main__, so importing exmaild.cli here would make a second registry).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from exmaild.mailauth import keys as K


def _err(text: str) -> int:
    sys.stderr.write(f"exmailctl: {text}\n")
    return 1


def _domain(name: str) -> str:
    return name.strip().lower().rstrip(".")


async def dkim_generate(store: Any, a: argparse.Namespace) -> int:
    domain = _domain(a.domain)
    if await store.directory.get_domain(domain) is None:
        return _err(f"unknown domain {domain}: add it with `exmailctl domain add {domain}`")
    try:
        selector = K.check_selector(a.selector or _default_selector(a.algorithm))
    except ValueError as e:
        return _err(str(e))
    existing = await store.pool.do(lambda c: K.keys_of(c, domain))
    if any(k.selector == selector for k in existing):
        return _err(f"{domain} already has a key with selector {selector}: choose another "
                    "--selector (two selectors rotate)")
    key = await store.pool.call(K.new_key, domain, selector, a.algorithm, a.standby)
    await store.pool.transaction(lambda c: K.add_key(c, key))
    print(key.dns_line)
    return 0


def _default_selector(algorithm: str) -> str:
    return "ed1" if algorithm == "ed25519" else "s1"


async def dkim_show(store: Any, a: argparse.Namespace) -> int:
    domain = _domain(a.domain)
    found = await store.pool.do(lambda c: K.keys_of(c, domain))
    shown = [k for k in found if a.all or k.state == K.ACTIVE]
    if not shown:
        return _err(f"no active DKIM key for {domain}: `exmailctl dkim generate {domain}`")
    for k in shown:  # with --all, the state as a zone-file comment
        print(k.dns_line + (f"  ; {k.state}" if a.all else ""))
    return 0


async def dkim_activate(store: Any, a: argparse.Namespace) -> int:
    domain = _domain(a.domain)
    if not await store.pool.transaction(lambda c: K.set_state(c, domain, a.selector, K.ACTIVE)):
        return _err(f"no key {a.selector} for {domain}")
    print(f"{a.selector}._domainkey.{domain}: signing now; the previous key is retired")
    return 0


async def dkim_remove(store: Any, a: argparse.Namespace) -> int:
    domain = _domain(a.domain)
    if not await store.pool.transaction(lambda c: K.remove_key(c, domain, a.selector)):
        return _err(f"no key {a.selector} for {domain}")
    print(f"{a.selector}._domainkey.{domain}: removed")
    return 0


async def dkim_check(store: Any, a: argparse.Namespace) -> int:
    """Compare each key's published record with the stored public key."""
    from twisted.internet import reactor

    from exmaild.mailauth.resolver import AuthResolver, DNSTemporaryError

    domain = _domain(a.domain)
    found = [k for k in await store.pool.do(lambda c: K.keys_of(c, domain))
             if k.state in (K.ACTIVE, K.STANDBY)]
    if not found:
        return _err(f"no DKIM key for {domain}")
    q = store.cfg.queue
    res = AuthResolver(reactor, q.dns_servers, q.dns_timeout, threads=1)
    bad = 0
    try:
        for k in found:
            name = k.record_name
            try:
                records = await res.run(res.txt, name)
            except DNSTemporaryError as e:
                print(f"{name} {k.state}: DNS error ({e})")
                bad += 1
                continue
            dkim = [K.parse_record(r.decode("ascii", "replace")) for r in records]
            dkim = [t for t in dkim if t.get("p") is not None]
            if not dkim:
                print(f"{name} {k.state}: not published")
                bad += 1
            elif any(t.get("p") == k.public_key and t.get("k", "rsa") == k.algorithm
                     for t in dkim):
                print(f"{name} {k.state}: ok")
            else:
                print(f"{name} {k.state}: published key differs")
                bad += 1
    finally:
        res.stop()
    return 1 if bad else 0


def add_parsers(sub: Any, command: Callable[[str, str], Callable[[Any], Any]]) -> None:
    dk = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(dest="cmd", required=True)
    gen = dk.add_parser("generate", help="make a key; prints the DNS record to publish")
    gen.add_argument("domain")
    gen.add_argument("--selector", help="default s1 (rsa) or ed1 (ed25519)")
    gen.add_argument("--algorithm", choices=K.ALGORITHMS, default="rsa")
    gen.add_argument("--standby", action="store_true",
                     help="publish first, sign later (`dkim activate`): for rotation")
    show = dk.add_parser("show", help="DNS records of the active keys")
    show.add_argument("domain")
    show.add_argument("--all", action="store_true", help="every key, with its state")
    for name, helptext in (("activate", "sign with this key; retire the previous one"),
                           ("remove", "delete a (retired) key")):
        p = dk.add_parser(name, help=helptext)
        p.add_argument("domain")
        p.add_argument("selector")
    dk.add_parser("check", help="compare published DNS records with the keys").add_argument(
        "domain")
    for name, fn in (("generate", dkim_generate), ("show", dkim_show),
                     ("activate", dkim_activate), ("remove", dkim_remove),
                     ("check", dkim_check)):
        command("dkim", name)(fn)

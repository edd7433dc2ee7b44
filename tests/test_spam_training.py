"""rspamd training from IMAP: MOVE/COPY into Junk sends learn_spam, out of
Junk learn_ham, to the controller (a recording HTTP server on 127.0.0.1 here;
tests/test_spam.py checks the real controller takes the request)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from imapclient import IMAPClient
from twisted.internet import reactor
from twisted.web import resource, server

from exmaild.config import Config
from exmaild.spam.config import SpamConfig
from exmaild.store.connector import Store

from .imaputil import PASSWORD, Server, blocking, mail, start_server, stop_server


class Controller(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        pw = (request.getHeader(b"password") or b"").decode()
        self.seen.append((request.path.decode(), pw, request.content.read()))
        return b'{"success":true}'


@pytest_twisted.async_yield_fixture
async def lab(cfg: Config, store: Store) -> AsyncIterator[tuple[Server, Controller]]:
    ctl = Controller()
    port = reactor.listenTCP(0, server.Site(ctl), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    c = dataclasses.replace(cfg, spam=SpamConfig(url="http://127.0.0.1:9", learn=True,
                                                 controller_url=url, password="pw"))
    srv = await start_server(c, store)
    yield srv, ctl
    await stop_server(srv)
    await port.stopListening()


def session(port: int, steps: Any) -> None:
    with IMAPClient("127.0.0.1", port=port, ssl=False) as c:
        c.login("alice@example.test", PASSWORD)
        c.select_folder("INBOX")
        steps(c)


async def wait_for(ctl: Controller, n: int) -> None:
    deadline = time.monotonic() + 60  # generous; only the count is asserted
    while len(ctl.seen) < n and time.monotonic() < deadline:
        await blocking(time.sleep, 0.05)


@pytest_twisted.ensureDeferred
async def test_moves_train_rspamd(lab: tuple[Server, Controller]) -> None:
    srv, ctl = lab
    acct = await srv.account()
    await srv.deliver(acct.id, mail("cheap pills"))
    await srv.deliver(acct.id, mail("real news"), mailbox="Junk")
    await srv.deliver(acct.id, mail("old junk"), mailbox="Junk")

    def into_junk(c: IMAPClient) -> None:
        c.move(c.search(["SUBJECT", "cheap pills"]), "Junk")

    await blocking(session, srv.port, into_junk)
    await wait_for(ctl, 1)
    [(path, pw, body)] = ctl.seen
    assert path == "/learnspam" and pw == "pw" and b"Subject: cheap pills" in body

    def out_of_junk(c: IMAPClient) -> None:
        c.select_folder("Junk")
        c.copy(c.search(["SUBJECT", "old junk"]), "Deleted")  # deleting is not "ham"
        c.move(c.search(["SUBJECT", "real news"]), "INBOX")

    await blocking(session, srv.port, out_of_junk)
    await wait_for(ctl, 2)
    assert [(p, b"real news" in b) for p, _, b in ctl.seen] == [
        ("/learnspam", False), ("/learnham", True)]


@pytest_twisted.ensureDeferred
async def test_no_training_unless_configured(cfg: Config, store: Store) -> None:
    ctl = Controller()
    port = reactor.listenTCP(0, server.Site(ctl), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    c = dataclasses.replace(cfg, spam=SpamConfig(url="http://127.0.0.1:9", learn=False,
                                                 controller_url=url))
    srv = await start_server(c, store)
    try:
        acct = await srv.account()
        await srv.deliver(acct.id, mail("cheap pills"))
        await blocking(session, srv.port, lambda cl: cl.move(cl.search(["ALL"]), "Junk"))
        assert ctl.seen == []
    finally:
        await stop_server(srv)
        await port.stopListening()

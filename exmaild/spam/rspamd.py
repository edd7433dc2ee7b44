"""rspamd's HTTP protocol (`POST /checkv2`, the controller's `/learnspam`
and `/learnham`) with twisted's HTTP client: never on a thread, bounded by
`[spam] timeout`, and a failure is only ever logged (mail is accepted)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from exmaild.spam.config import SpamConfig

log = Logger(namespace="exmaild.spam")

# rspamd's actions -> ours.
REJECT = ("reject",)
TEMPFAIL = ("soft reject", "greylist")
JUNK = ("add header", "rewrite subject")


@dataclass(frozen=True)
class SpamResult:
    action: str  # rspamd's action
    score: float
    required: float = 0.0
    symbols: tuple[str, ...] = field(default=())

    @property
    def ours(self) -> str:
        """reject | tempfail | junk | inbox"""
        if self.action in REJECT:
            return "reject"
        if self.action in TEMPFAIL:
            return "tempfail"
        if self.action in JUNK:
            return "junk"
        return "inbox"


def parse_reply(body: bytes) -> SpamResult:
    data = json.loads(body)
    if not isinstance(data, dict) or "action" not in data:
        raise ValueError(f"not a /checkv2 reply: {body[:100]!r}")
    symbols = data.get("symbols") or {}
    return SpamResult(str(data["action"]), float(data.get("score", 0.0)),
                      float(data.get("required_score", 0.0)),
                      tuple(sorted(symbols)) if isinstance(symbols, dict) else ())


MAX_REPLY = 1 << 20  # octets of a reply read; rspamd's are a few KB


class _Collect(protocol.Protocol):
    """A response body, whole (readBody, without its deprecation warning)."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= MAX_REPLY:
            self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class Rspamd:
    def __init__(self, reactor: Any, cfg: SpamConfig) -> None:
        self.reactor = reactor
        self.cfg = cfg
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        pool.retryAutomatically = False
        self.agent = Agent(reactor, connectTimeout=cfg.timeout, pool=pool)
        self.pool = pool

    async def _post(self, url: str, headers: dict[bytes, list[bytes]], message: bytes
                    ) -> tuple[int, bytes]:
        async def call() -> tuple[int, bytes]:
            resp = await self.agent.request(b"POST", url.encode(), Headers(headers),
                                            FileBodyProducer(BytesIO(message)))
            body: defer.Deferred[bytes] = defer.Deferred()
            resp.deliverBody(_Collect(body))
            return resp.code, await body

        d = defer.Deferred.fromCoroutine(call())
        d.addTimeout(self.cfg.timeout, self.reactor)
        return await d

    async def check(self, message: bytes, *, ip: str, helo: str, sender: str,
                    rcpts: list[str], queue_id: str, user: str | None = None
                    ) -> SpamResult | None:
        """rspamd's verdict, or None (down, slow, too big or an odd reply: logged)."""
        if len(message) > self.cfg.max_size:
            return None
        headers: dict[bytes, list[bytes]] = {
            b"IP": [ip.encode()], b"From": [sender.encode("utf-8", "replace")],
            b"Rcpt": [r.encode("utf-8", "replace") for r in rcpts],
            b"Queue-Id": [queue_id.encode()],
        }
        if helo:
            headers[b"Helo"] = [helo.encode("ascii", "replace")]
        if user:
            headers[b"User"] = [user.encode("utf-8", "replace")]
        url = self.cfg.url.rstrip("/") + "/checkv2"
        try:
            code, body = await self._post(url, headers, message)
            if code != 200:
                raise ValueError(f"HTTP {code}: {body[:100]!r}")
            return parse_reply(body)
        except Exception as e:
            why = "timed out" if isinstance(e, defer.TimeoutError | defer.CancelledError) else e
            log.warn("{queue_id}: rspamd at {url} gave no verdict ({error}); message accepted "
                     "unchecked", queue_id=queue_id, url=self.cfg.url, error=str(why)[:200])
            return None

    async def learn(self, kind: str, message: bytes, queue_id: str = "") -> bool:
        """Train rspamd: kind is "spam" or "ham". Errors are logged, never raised."""
        url = self.cfg.controller_url.rstrip("/") + f"/learn{kind}"
        headers: dict[bytes, list[bytes]] = {}
        if self.cfg.password:
            headers[b"Password"] = [self.cfg.password.encode()]
        try:
            code, body = await self._post(url, headers, message)
        except Exception as e:
            log.warn("rspamd learn_{kind} at {url} failed: {error}", kind=kind,
                     url=self.cfg.controller_url, error=str(e)[:200] or type(e).__name__)
            return False
        # 208: already learnt; anything else but 200 is worth a line.
        if code not in (200, 208):
            log.warn("rspamd learn_{kind} at {url}: HTTP {code} {body}", kind=kind,
                     url=self.cfg.controller_url, code=code, body=body[:200].decode(
                         "utf-8", "replace"))
            return False
        log.debug("rspamd learn_{kind} done", kind=kind)
        return True

    def close(self) -> Any:
        return self.pool.closeCachedConnections()

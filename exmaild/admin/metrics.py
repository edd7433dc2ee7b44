"""GET /metrics on the admin listener: the daemon's Prometheus metrics
(exmaild/metrics.py). Like /healthz it needs no token: bind the admin
listener to loopback or firewall it (docs/metrics.md)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild.app import App
from exmaild.metrics import CONTENT_TYPE

log = Logger()


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    async def _render(self) -> bytes:
        metrics = self.app.store.metrics
        await metrics.refresh(self.app.store)
        return metrics.exposition()

    def render_GET(self, request: IRequest) -> Any:
        d = defer.Deferred.fromCoroutine(self._render())

        def done(body: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE)
            request.write(body)
            request.finish()

        def failed(f: Any) -> None:
            log.failure("metrics: the scrape failed", f)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(f"metrics unavailable: {f.getErrorMessage()}\n".encode())
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

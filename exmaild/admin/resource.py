"""The admin HTTP listener (twisted.web): GET /healthz, GET /metrics
(exmaild/admin/metrics.py) and the admin API under /api/v1 (exmaild/admin/api.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild import __version__
from exmaild.app import App

Handler = Callable[[App, IRequest], Awaitable[tuple[int, Any]]]


class JSONResource(resource.Resource):
    """A GET endpoint whose async handler returns (HTTP status, JSON body)."""

    isLeaf = True

    def __init__(self, app: App, handler: Handler) -> None:
        super().__init__()
        self.app = app
        self.handler = handler

    def render_GET(self, request: IRequest) -> Any:
        d = defer.Deferred.fromCoroutine(self.handler(self.app, request))
        gone: list[bool] = []
        # The client may hang up before the answer is ready (a /healthz probe
        # that timed out): then there is no one to answer.
        request.notifyFinish().addErrback(lambda _f: gone.append(True))

        def done(result: tuple[int, Any]) -> None:
            if gone:
                return
            code, body = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(body).encode() + b"\n")
            request.finish()

        def failed(f: Any) -> None:
            if gone:
                return
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": f.getErrorMessage()}).encode() + b"\n")
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


async def healthz(app: App, request: IRequest) -> tuple[int, Any]:
    h = await app.store.health()
    ok = h["database"] and h["schema_current"]
    return (200 if ok else 503), {"version": __version__, "status": "ok" if ok else "fail", **h}


def make_site(app: App) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", JSONResource(app, healthz))
    from exmaild.admin.metrics import MetricsResource

    root.putChild(b"metrics", MetricsResource(app))
    from exmaild.admin.api import APIResource

    root.putChild(b"api", APIResource(app))
    from exmaild.exmail_api.resource import CgiBinResource

    root.putChild(b"cgi-bin", CgiBinResource(app))  # Exmail's open API (docs/exmail-api.md)
    return server.Site(root)

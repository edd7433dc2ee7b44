"""The admin HTTP API (twisted.web). For now: GET /healthz."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild import __version__
from exmaild.app import App


class JSONResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    async def get(self, request: IRequest) -> tuple[int, Any]:
        raise NotImplementedError

    def render_GET(self, request: IRequest) -> Any:
        d = defer.Deferred.fromCoroutine(self.get(request))

        def done(result: tuple[int, Any]) -> None:
            code, body = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(body).encode() + b"\n")
            request.finish()

        def failed(f: Any) -> None:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": f.getErrorMessage()}).encode() + b"\n")
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class Healthz(JSONResource):
    async def get(self, request: IRequest) -> tuple[int, Any]:
        h = await self.app.store.health()
        ok = h["database"] and h["schema_current"]
        return (200 if ok else 503), {"version": __version__, "status": "ok" if ok else "fail", **h}


def make_site(app: App) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", Healthz(app))
    return server.Site(root)

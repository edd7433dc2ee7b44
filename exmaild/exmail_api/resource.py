"""/cgi-bin/ on the admin listener: Exmail's open API, JSON in and out.

Every answer is HTTP 200 with `errcode` and `errmsg` (0, "ok" on success), as
Exmail answers; some clients throw away the body of any other status. A call
needs `access_token` (from gettoken) whose purpose covers it; the caller then
acts with full rights inside that token's enterprise only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild.app import App
from exmaild.directory.actor import Actor
from exmaild.directory.errors import ServiceError
from exmaild.directory.service import DirectoryService
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.errors import ApiError
from exmaild.exmail_api.secrets import check_token, get_token
from exmaild.store.directory import DirectoryError

log = Logger()


@dataclass
class Call:
    app: App
    svc: DirectoryService
    actor: Actor
    enterprise_id: int
    query: dict[str, str]
    body: dict[str, Any]

    def arg(self, name: str) -> Any:
        """A parameter from the JSON body or the query string; "" and null
        mean "not given", as the SDKs send them."""
        v = self.body.get(name, self.query.get(name))
        return None if v == "" else v


Handler = Callable[[Call], Awaitable[dict[str, Any]]]


def _routes() -> dict[str, tuple[str, Handler]]:
    from exmaild.exmail_api import departments, groups, logs, oplog, options, users

    return {
        **{f"department/{k}": ("directory", h) for k, h in departments.HANDLERS.items()},
        **{f"user/{k}": ("directory", h) for k, h in users.HANDLERS.items()},
        **{f"group/{k}": ("directory", h) for k, h in groups.HANDLERS.items()},
        **{f"useroption/{k}": ("directory", h) for k, h in options.OPTION_HANDLERS.items()},
        "mail/newcount": ("newmail", options.newcount),
        "service/get_login_url": ("login", options.get_login_url),
        **{f"log/{k}": ("logs", h) for k, h in logs.HANDLERS.items()},
        **{f"log/{k}": ("logs", h) for k, h in oplog.HANDLERS.items()},
    }


def _client_ip(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", ""))


class CgiBinResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app
        self.svc = DirectoryService(app.store, app.cfg.directory)
        self.routes = _routes()

    def render(self, request: IRequest) -> Any:
        d = defer.Deferred.fromCoroutine(self._handle(request))
        d.addErrback(lambda f: log.failure("Exmail API request failed", f))
        return server.NOT_DONE_YET

    async def _handle(self, request: IRequest) -> None:
        try:
            out = {"errcode": E.OK, "errmsg": "ok", **await self._dispatch(request)}
        except ApiError as e:
            out = {"errcode": e.errcode, "errmsg": e.errmsg}
        except (ServiceError, DirectoryError) as e:
            out = {"errcode": E.INVALID_PARAMETER, "errmsg": str(e)}
        except Exception:
            log.failure("Exmail API: unexpected error in {path}", path=request.path)
            out = {"errcode": E.BUSY, "errmsg": "system busy (see the server log)"}
        if request.finished or request.channel is None:
            return
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(out, ensure_ascii=False).encode() + b"\n")
        request.finish()

    async def _dispatch(self, request: IRequest) -> dict[str, Any]:
        path = request.path.decode("latin-1").split("?", 1)[0]
        name = path.removeprefix("/cgi-bin/").strip("/")
        # From the URL only: twisted.web also folds a form-encoded body into
        # request.args, and SDKs often post JSON under that content type.
        raw = request.uri.decode("latin-1").partition("?")[2]
        query = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True,
                                               errors="replace").items()}
        cfg = self.app.cfg.exmail_api
        if name == "gettoken":
            token, ttl = await get_token(self.svc, query.get("corpid", ""),
                                         query.get("corpsecret", ""), cfg.token_ttl)
            return {"access_token": token, "expires_in": ttl}
        grant = await check_token(self.svc, query.get("access_token", ""))
        route = self.routes.get(name)
        if route is None:
            raise ApiError(E.INVALID_PARAMETER, f"unknown API {name!r}")
        purpose, handler = route
        if purpose != grant.purpose:
            raise ApiError(E.NOT_PERMITTED,
                           f"api forbidden: this access_token is for {grant.purpose} calls, "
                           f"{name} needs a {purpose} secret")
        body = _body(request, self.app.cfg.directory.api_max_body)
        actor = Actor(f"exmail-api:{purpose}", ip=_client_ip(request),
                      enterprise_id=grant.enterprise_id, role="token")
        return await handler(Call(self.app, self.svc, actor, grant.enterprise_id, query, body))


def _body(request: IRequest, max_body: int) -> dict[str, Any]:
    if request.method != b"POST":
        return {}
    request.content.seek(0)
    data = request.content.read(max_body + 1)
    if len(data) > max_body:
        raise ApiError(E.INVALID_PARAMETER, f"the body is larger than {max_body} bytes")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(E.INVALID_PARAMETER, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(E.INVALID_PARAMETER, "the body must be a JSON object")
    return body

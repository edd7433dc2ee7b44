"""The HTTP side of the admin API's route table (exmaild/admin/api.py): which
route a request reaches (and which methods a 405 allows), reading its path,
query and body against the route's schemas, and the OpenAPI 3.1 document
built from the same table. A schema refusal names the `field` it is about,
so a client (and the fuzzer in tests/apifuzz.py) can tell it from a rule.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from twisted.web.iweb import IRequest

from exmaild.admin import schema as S
from exmaild.directory.errors import NotFound, ServiceError

if TYPE_CHECKING:
    from exmaild.admin.api import Route

PREFIX = "/api/v1"


class HTTPError(ServiceError):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 allow: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.code, self.field, self.allow = status, code, field, allow


def bad_request(message: str, field: str | None = None) -> HTTPError:
    return HTTPError(400, "malformed", message, field=field)


def error_body(e: ServiceError) -> dict[str, Any]:
    err: dict[str, Any] = {"code": e.code, "message": e.message}
    if getattr(e, "field", None):
        err["field"] = e.field  # type: ignore[attr-defined]
    return {"error": err}


# -- choosing the route ---------------------------------------------------------
def _literal_parts(route: Route) -> int:
    return sum(not p.startswith("{") for p in route.path.strip("/").split("/"))


def resolve(routes: tuple[Route, ...], segments: list[str], method: str
            ) -> tuple[Route | None, dict[str, str], list[Route]]:
    """(the route, its raw path parameters, the routes of this path).

    A path such as /departments/export also fits /departments/{id}; the
    routes with the most literal segments own it, so its 405 lists only their
    methods and PATCH on it is 405, not a search for department "export"."""
    found = [(r, p) for r in routes if (p := r.match(segments)) is not None]
    if not found:
        return None, {}, []
    best = max(_literal_parts(r) for r, _ in found)
    own = [(r, p) for r, p in found if _literal_parts(r) == best]
    chosen = next(((r, p) for r, p in own if r.method == method), None)
    if chosen is None:
        return None, {}, [r for r, _ in own]
    return chosen[0], chosen[1], [r for r, _ in own]


def not_allowed(method: str, routes: list[Route]) -> HTTPError:
    allow = ", ".join(sorted({r.method for r in routes}))
    return HTTPError(405, "method_not_allowed", f"{method} is not allowed here (allowed: "
                     f"{allow})", allow=allow.encode())


def segments(request: IRequest) -> list[str]:
    raw = request.path.decode("latin-1").split("?", 1)[0]
    if not raw.startswith(PREFIX + "/") and raw != PREFIX:
        raise NotFound("no such resource")
    try:
        return [unquote(s, errors="strict") for s in raw[len(PREFIX):].strip("/").split("/")]
    except UnicodeDecodeError:
        raise bad_request("the path is not UTF-8") from None


# -- reading a request ------------------------------------------------------------
_BOOL = {"true": True, "1": True, "false": False, "0": False}


def parse_query(route: Route, request: IRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    args = request.args or {}
    for name, sch in route.query.items():
        values = args.get(name.encode())
        if not values:
            if "default" in sch:  # what the document promises for a missing one
                out[name] = sch["default"]
            continue
        field = f"query parameter {name}"
        try:
            text = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"{field} is not UTF-8", name) from None
        typ = sch.get("type")
        value: Any = text
        if typ == "integer":
            if not re.fullmatch(r"-?\d{1,19}", text):
                raise bad_request(f"{field} must be an integer", name)
            value = int(text)
        elif typ == "boolean":
            if text.lower() not in _BOOL:
                raise bad_request(f"{field} must be true or false", name)
            value = _BOOL[text.lower()]
        try:
            S.validate(value, sch, field)
        except S.SchemaViolation as e:
            raise bad_request(str(e), name) from None
        out[name] = value
    return out


def parse_params(route: Route, raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in raw.items():
        sch = route.params.get(name, {"type": "string"})
        if sch.get("type") == "integer":
            if not re.fullmatch(r"\d{1,10}", text) or not 1 <= int(text) < 2**31:
                raise NotFound(f"no {name} {text!r}")
            out[name] = int(text)
        else:
            if not text or "\x00" in text or len(text) > sch.get("maxLength", 1000):
                raise NotFound(f"no {name} {text!r}")
            out[name] = text
    return out


def parse_body(route: Route, request: IRequest, max_body: int) -> Any:
    if route.body is None:
        return None
    request.content.seek(0)
    data = request.content.read(max_body + 1)
    if len(data) > max_body:
        raise HTTPError(413, "too_large", f"the body is larger than {max_body} bytes")
    if not data.strip():
        # The document marks every body required: an absent one is not {}.
        raise bad_request("a JSON body is required", "body")
    try:
        body = json.loads(data, parse_float=_number)
    except (ValueError, RecursionError):
        raise bad_request("the body is not JSON", "body") from None
    try:
        S.validate(body, route.body)
    except S.SchemaViolation as e:
        raise HTTPError(422, "invalid", str(e), field=e.where) from None
    return body


def _number(text: str) -> float | int:
    # JSON Schema counts 3.0 as an integer, so the server must too.
    f = float(text)
    return int(f) if f.is_integer() else f


# -- the OpenAPI document -----------------------------------------------------------
ERRORS = {400: "Malformed request", 401: "Missing or invalid token",
          403: "Outside the caller's rights", 404: "Not found",
          405: "Method not allowed here (the Allow header lists the methods)",
          409: "Conflict", 413: "Body too large", 422: "Breaks a rule", 429: "Throttled",
          503: "Cannot be checked now; try again later"}


def _codes(route: Route) -> list[int]:
    if not route.open:
        return [400, 401, 403, 404, 405, 409, 413, 422]
    # An open route needs no token; a login can be throttled or left unchecked.
    return [400, 401, 403, 405, 413, 422, 429, 503] if route.body is not None else [405]


_NO_NUL = "^[^\\u0000]*$"


def stated(schema: Any) -> Any:
    """A request schema as the server checks it: S.validate refuses NUL in
    every string (no database stores one), so the document says so."""
    if isinstance(schema, list):
        return [stated(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: stated(v) for k, v in schema.items()}
    t = schema.get("type")
    strings = t == "string" or (isinstance(t, list) and "string" in t)
    if strings and "pattern" not in schema and "enum" not in schema:
        out["pattern"] = _NO_NUL
    return out


def document(routes: tuple[Route, ...], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary,
                              "tags": [r.tag]}
        params = [{"name": n, "in": "path", "required": True, "schema": stated(s)}
                  for n, s in r.params.items()]
        params += [{"name": n, "in": "query", "required": False, "schema": stated(s)}
                   for n, s in r.query.items()]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": stated(r.body)}}}
        ok: dict[str, Any] = {"description": "OK"}
        if r.status != 204:
            ok["content"] = {"application/json": {"schema": r.response or {}}}
        op["responses"] = {str(r.status): ok}
        for code in _codes(r):
            op["responses"][str(code)] = {"$ref": f"#/components/responses/E{code}"}
        if r.open:
            op["security"] = []
        paths.setdefault(PREFIX + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "exmaild admin API", "version": version},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": S.ERROR},
            "responses": {f"E{code}": {"description": text, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
                for code, text in ERRORS.items()},
        },
    }

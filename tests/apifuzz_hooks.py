"""A schemathesis check loaded by tests/apifuzz.py (SCHEMATHESIS_HOOKS).

The admin API checks request bodies and query parameters with the very
schemas the OpenAPI document publishes (exmaild/admin/schema.py); such a
refusal says which `field` broke the schema. So input the document calls
valid must never come back as 400 (unreadable) or with a `field` (the
server's schema and the document's disagree). 422 without a `field` is a
rule the schema cannot state and stays allowed.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def _valid_body(case: Any) -> bool:
    """Whether the body (if any) is valid by the document: a case marked
    positive can still carry a body made for another purpose."""
    if case.body is None or type(case.body).__name__ == "NotSet":
        return True
    alt = case.operation.get_body_for_media_type(case.media_type)
    if alt is None:
        return True
    validator = case.operation.schema.adapter.jsonschema_validator_cls(alt.raw_schema)
    return validator.is_valid(case.body)


@schemathesis.check
def document_and_server_agree(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if not all(c.mode.is_positive for c in meta.components.values()):
        return None
    if not _valid_body(case):
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        error = json.loads(response.content or b"{}").get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if response.status_code == 400 or "field" in error:
        raise AssertionError(
            f"schema-valid input refused by the server's own checks: "
            f"{response.status_code} {error.get('message', '')!r}")
    return None

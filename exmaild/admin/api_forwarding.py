"""Admin API route of the per-member forwarding policy (manual §4.4.2.4,
exmaild/sieve/forwarding.py), beside the rule engine's other faces."""

from __future__ import annotations

from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.sieve.forwarding import MemberForwarding


async def get_member_forwarding(c: Ctx) -> tuple[int, Any]:
    return 200, await MemberForwarding(c.svc).get(_actor(c), c.params["address"])


async def set_member_forwarding(c: Ctx) -> tuple[int, Any]:
    return 200, await MemberForwarding(c.svc).set(_actor(c), c.params["address"],
                                                  c.body["forward_outside"])


FORWARDING = {"type": "object", "required": ["address", "forward_outside", "effective"],
              "properties": {"address": {"type": "string"},
                             "forward_outside": {"type": ["boolean", "null"]},
                             "effective": {"type": "boolean"}}}
FORWARDING_IN = {"type": "object", "required": ["forward_outside"],
                 "additionalProperties": False,
                 "properties": {"forward_outside": {
                     "type": ["boolean", "null"],
                     "description": "may the member's rules forward outside the enterprise's "
                                    "domains; null: the enterprise's setting"}}}
_ADDR = {"address": S.ADDRESS}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/members/{address}/forwarding", get_member_forwarding,
          "May the member forward outside the enterprise (its override, and what applies)",
          "rules", params=_ADDR, response=FORWARDING),
    Route("PUT", "/members/{address}/forwarding", set_member_forwarding,
          "Allow or forbid the member's forwards outside the enterprise, or null to follow "
          "the enterprise setting", "rules", params=_ADDR, body=FORWARDING_IN,
          response=FORWARDING),
)

"""/api/v1 routes of the mail log (mailstore/mail_log.py): the
administrators' query with CSV export, and a member's own sent mail."""

from __future__ import annotations

from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.mailstore import mail_log
from exmaild.mailstore.mail_log_service import MailLogService

MAIL_ENTRY = {"type": "object", "required": list(mail_log.COLUMNS),
              "properties": {c: {"type": "string"} for c in mail_log.COLUMNS}
              | {"time": S.EPOCH, "size": {"type": "integer"},
                 "direction": {"type": "string", "enum": ["in", "out"]},
                 "status": {"type": "string", "enum": list(mail_log.STATUSES)}}}
_PAGE = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
         "offset": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}}
_RANGE = {"since": S.EPOCH, "until": S.EPOCH}


async def list_mail_log(c: Ctx) -> tuple[int, Any]:
    q = c.query
    page = await MailLogService(c.svc).query(
        _actor(c), since=q.get("since"), until=q.get("until"), direction=q.get("direction"),
        member=q.get("member"), domain=q.get("domain"), subject=q.get("subject"),
        status=q.get("status"), limit=q.get("limit", 100), offset=q.get("offset", 0))
    if q.get("format") == "csv":
        return 200, {"csv": mail_log.to_csv(page["items"]), "total": page["total"],
                     "next_offset": page["next_offset"]}
    return 200, page


async def my_mail_log(c: Ctx) -> tuple[int, Any]:
    q = c.query
    return 200, await MailLogService(c.svc).mine(
        _actor(c), since=q.get("since"), until=q.get("until"), limit=q.get("limit", 100),
        offset=q.get("offset", 0))


ROUTES = (
    Route("GET", "/maillog", list_mail_log,
          "The mail log, one row per recipient, newest first (format=csv: as CSV)", "log",
          response=S.page_or_csv(MAIL_ENTRY), query={
              **_PAGE, **_RANGE, "direction": {"type": "string", "enum": ["in", "out"]},
              "member": S.ADDRESS, "domain": S._str(253, 1),
              "subject": S._str(200, 1, description="part of the subject"),
              "status": {"type": "string", "enum": list(mail_log.STATUSES)},
              "format": {"type": "string", "enum": ["json", "csv"]}}),
    Route("GET", "/me/maillog", my_mail_log,
          "Your own sent mail, each recipient with its delivery status, newest first", "me",
          response=S.page_of(MAIL_ENTRY), query={**_PAGE, **_RANGE}),
)

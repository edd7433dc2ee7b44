"""/api/v1 routes of import jobs (exmaild/directory/jobs.py): start a CSV
import of members, departments or groups in the background (202 with the
job and its Location), then poll the job for its progress and outcome."""

from __future__ import annotations

from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.admin.api_http import PREFIX
from exmaild.directory.jobs import KINDS, STATES, jobs_of

_ERROR = {"type": ["object", "null"], "required": ["code", "message"],
          "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                         "status": {"type": "integer"}}}
JOB = {"type": "object",
       "required": ["id", "kind", "state", "rows_total", "rows_done", "progress", "result",
                    "error", "created"],
       "properties": {
           "id": {"type": "integer"},
           "kind": {"type": "string", "enum": [f"import.{k}" for k in KINDS]},
           "state": {"type": "string", "enum": list(STATES)},
           "phase": {"type": ["string", "null"], "enum": ["queued", "checking", "applying", None],
                     "description": "while it runs: checking every row, then applying them "
                                    "in one transaction"},
           "rows_total": {"type": "integer"},
           "rows_done": {"type": "integer", "description": "rows of the current phase"},
           "progress": {"type": ["number", "null"],
                        "description": "0 to 1 over both phases; null once failed"},
           "result": {"type": ["object", "null"],
                      "description": "when done: what the synchronous import answers"},
           "error": {**_ERROR, "description": "when failed: the import's error (the first "
                                              "bad row by its line); nothing was applied"},
           "created": S.EPOCH, "started": {"type": ["integer", "null"]},
           "finished": {"type": ["integer", "null"]}}}


async def start_import(c: Ctx) -> tuple[int, Any]:
    job = await jobs_of(c.svc, c.app.reactor).start(_actor(c), c.params["kind"], c.body["csv"])
    c.request.setHeader(b"location", f"{PREFIX}/jobs/{job['id']}".encode())
    return 202, job


async def get_job(c: Ctx) -> tuple[int, Any]:
    return 200, await jobs_of(c.svc, c.app.reactor).get(_actor(c), c.params["id"])


async def list_jobs(c: Ctx) -> tuple[int, Any]:
    return 200, await jobs_of(c.svc, c.app.reactor).list(
        _actor(c), limit=c.query.get("limit", 50), offset=c.query.get("offset", 0))


ROUTES: tuple[Route, ...] = (
    Route("POST", "/imports/{kind}", start_import,
          "Start a CSV import (members, departments or groups) as a job: 202 with the job "
          "and its Location; poll GET /jobs/{id}", "jobs", status=202,
          params={"kind": {"type": "string", "enum": list(KINDS)}},
          body={**S.IMPORT, "properties": {"csv": {
              "type": "string", "description": "the CSV the synchronous import of that kind "
                                               "reads (POST /members/import ...)"}}},
          response=JOB),
    Route("GET", "/jobs", list_jobs, "Import jobs of the enterprise, newest first", "jobs",
          response=S.page_of(JOB),
          query={"limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                 "offset": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}}),
    Route("GET", "/jobs/{id}", get_job, "An import job: state, progress, result or error",
          "jobs", params={"id": S.ID}, response=JOB),
)

"""CSV imports as jobs of the admin API (issue 10): 202 with a Location, a
job to poll with its progress, all or nothing, scoped to the enterprise,
"failed: interrupted" after a restart. The real daemon over real HTTP, on
SQLite (and PostgreSQL when EXMAILD_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon, exmailctl, write_config

PW = "Secret123x"


def call(port: int, method: str, path: str, token: str | None = None,
         body: Any = None) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, text, headers = e.code, e.read(), dict(e.headers)
    return status, (json.loads(text) if text.strip() else None), headers


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("importjobs")
    db_url = ""
    if PG_URL:
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    config, ports = write_config(tmp, db_url, directory={"member_limit": 10000})
    ok(config, "enterprise", "add", "Acme")
    ok(config, "domain", "add", "acme.test")
    ok(config, "dept", "add", "Sales")
    acme = ok(config, "token", "create", "--name", "hr").strip()
    ok(config, "enterprise", "add", "Globex")
    ok(config, "domain", "add", "globex.test", "--enterprise", "Globex")
    globex = ok(config, "token", "create", "--enterprise", "Globex").strip()
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    yield {"port": ports["admin"], "acme": acme, "globex": globex, "daemon": d,
           "config": config}
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def members_csv(prefix: str, n: int, bad_line: int | None = None) -> str:
    rows = ["address,name,departments"]
    for i in range(n):
        dept = "Nope" if bad_line == i + 2 else "Sales"
        rows.append(f"{prefix}{i:04d}@acme.test,Member {i},{dept}")
    return "\r\n".join(rows) + "\r\n"


def wait_job(port: int, token: str, jid: int, seen: list[dict[str, Any]] | None = None,
             timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job, _ = call(port, "GET", f"/api/v1/jobs/{jid}", token)
        assert status == 200, job
        if seen is not None:
            seen.append(job)
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {jid} did not finish")


def member_total(port: int, token: str, q: str) -> int:
    status, page, _ = call(port, "GET", f"/api/v1/members?q={q}&limit=1", token)
    assert status == 200, page
    return int(page["total"])


def test_a_thousand_members_as_a_job(env: dict[str, Any]) -> None:
    port, tok = env["port"], env["acme"]
    status, job, headers = call(port, "POST", "/api/v1/imports/members", tok,
                                {"csv": members_csv("bulk", 1000)})
    assert status == 202, job
    assert headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["kind"] == "import.members" and job["state"] in ("queued", "running")
    assert job["rows_total"] == 1000 and job["result"] is None and job["error"] is None
    seen: list[dict[str, Any]] = []
    answered = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        # The daemon keeps answering other requests while the job runs.
        assert call(port, "GET", "/healthz")[0] == 200
        assert call(port, "GET", "/api/v1/departments", tok)[0] == 200
        answered += 1
        status, cur, _ = call(port, "GET", f"/api/v1/jobs/{job['id']}", tok)
        assert status == 200
        seen.append(cur)
        if cur["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    done = seen[-1]
    assert done["state"] == "done", done["error"]
    assert done["result"] == {"imported": 1000} and done["progress"] == 1.0
    assert done["rows_done"] == done["rows_total"] == 1000
    assert done["finished"] >= done["started"] >= done["created"]
    running = [j for j in seen if j["state"] == "running"]
    for j in running:
        assert j["phase"] in ("checking", "applying") and 0 <= j["rows_done"] <= 1000
        assert 0.0 <= j["progress"] <= 1.0
    fractions = [j["progress"] for j in running]
    assert fractions == sorted(fractions)  # never goes back
    assert member_total(port, tok, "bulk") == 1000

    # Another enterprise's token does not see it.
    assert call(port, "GET", f"/api/v1/jobs/{job['id']}", env["globex"])[0] == 404
    status, page, _ = call(port, "GET", "/api/v1/jobs", env["globex"])
    assert status == 200 and page["items"] == [] and page["total"] == 0
    status, page, _ = call(port, "GET", "/api/v1/jobs", tok)
    assert status == 200 and job["id"] in [j["id"] for j in page["items"]]


def test_a_bad_row_fails_the_job_and_applies_nothing(env: dict[str, Any]) -> None:
    port, tok = env["port"], env["acme"]
    status, job, _ = call(port, "POST", "/api/v1/imports/members", tok,
                          {"csv": members_csv("half", 50, bad_line=40)})
    assert status == 202
    done = wait_job(port, tok, job["id"])
    assert done["state"] == "failed" and done["result"] is None and done["progress"] is None
    assert (done["error"]["code"], done["error"]["status"]) == ("not_found", 404)
    assert done["error"]["message"] == "line 40: unknown department Nope"
    assert member_total(port, tok, "half") == 0

    # The synchronous route answers the same error, as before.
    status, body, _ = call(port, "POST", "/api/v1/members/import", tok,
                           {"csv": members_csv("half", 50, bad_line=40)})
    assert status == 404 and body["error"]["message"] == done["error"]["message"]


def test_departments_and_groups_as_jobs(env: dict[str, Any]) -> None:
    port, tok = env["port"], env["acme"]
    status, job, _ = call(port, "POST", "/api/v1/imports/departments", tok,
                          {"csv": "path\r\nEng/Web\r\nEng/Ops\r\nSales\r\n"})
    assert status == 202
    done = wait_job(port, tok, job["id"])
    assert done["state"] == "done" and done["result"] == {"rows": 3, "added": 3}, done
    paths = {d["path"] for d in call(port, "GET", "/api/v1/departments", tok)[1]["items"]}
    assert {"Eng", "Eng/Web", "Eng/Ops"} <= paths

    status, job, _ = call(port, "POST", "/api/v1/imports/groups", tok,
                          {"csv": "address,departments\r\nweb@acme.test,Eng/Web\r\n"})
    done = wait_job(port, tok, job["id"])
    assert done["state"] == "done" and done["result"] == {"rows": 1, "added": 1}, done
    assert call(port, "GET", "/api/v1/groups/web@acme.test", tok)[0] == 200

    status, job, _ = call(port, "POST", "/api/v1/imports/groups", tok,
                          {"csv": "address,members\r\nx@acme.test,\r\n"
                                   "y@acme.test,no@acme.test\r\n"})
    done = wait_job(port, tok, job["id"])
    assert done["state"] == "failed" and done["error"]["message"].startswith("line 3: ")
    assert call(port, "GET", "/api/v1/groups/x@acme.test", tok)[0] == 404

    # Unknown kinds and jobs: 404; the document describes the routes.
    assert call(port, "POST", "/api/v1/imports/tags", tok, {"csv": ""})[0] == 404
    assert call(port, "GET", "/api/v1/jobs/999999", tok)[0] == 404
    assert call(port, "GET", "/api/v1/jobs/1")[0] == 401
    doc = call(port, "GET", "/api/v1/openapi.json")[1]
    op = doc["paths"]["/api/v1/imports/{kind}"]["post"]
    assert "202" in op["responses"]
    assert "get" in doc["paths"]["/api/v1/jobs/{id}"] and "get" in doc["paths"]["/api/v1/jobs"]


def test_a_running_job_is_interrupted_by_a_restart(env: dict[str, Any]) -> None:
    port, tok, d = env["port"], env["acme"], env["daemon"]
    status, job, _ = call(port, "POST", "/api/v1/imports/members", tok,
                          {"csv": members_csv("cut", 1000)})
    assert status == 202
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cur = call(port, "GET", f"/api/v1/jobs/{job['id']}", tok)[1]
        if cur["state"] == "running" and cur["rows_done"] > 0:
            break
        time.sleep(0.02)
    assert cur["state"] == "running", cur
    d.kill()  # mid-import: no clean stop
    d.start(wait=60)
    done = call(port, "GET", f"/api/v1/jobs/{job['id']}", tok)[1]
    assert done["state"] == "failed" and done["error"]["code"] == "interrupted", done
    assert done["error"]["message"].startswith("interrupted")
    assert member_total(port, tok, "cut") == 0

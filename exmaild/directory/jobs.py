"""CSV imports run as jobs of the admin API (issue 10): `start` answers at
once with a queued job; the import runs in the background — its checks on
the reactor with a turn given back every hundred rows, its one transaction on
the database thread pool — so the daemon keeps answering meanwhile. The
all-or-nothing rule is the import's own: a failed job applied nothing.

Jobs are rows of `directory_jobs`, scoped to the enterprise; the live count
of a running job is in this process's memory. A job this node was running
when its daemon stopped is marked `failed` with code `interrupted` the first
time this process touches jobs (before it starts one of its own).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.directory.actor import Actor
from exmaild.directory.errors import NotFound, ServiceError
from exmaild.directory.progress import Progress, count_rows
from exmaild.store.directory import DirectoryError
from exmaild.store.model_jobs import directory_jobs

log = Logger()
J = directory_jobs.c

# kind -> (the DirectoryService import method, the function it needs)
KINDS = {"members": ("import_members", "members"),
         "departments": ("import_departments", "departments"),
         "groups": ("import_groups", "members")}
STATES = ("queued", "running", "done", "failed")
INTERRUPTED = {"code": "interrupted", "status": 500,
               "message": "interrupted: the daemon stopped while the import ran; nothing of "
                          "it was applied (start it again)"}


def _now() -> int:
    return int(time.time())


class ImportJobs:
    def __init__(self, svc: Any, node: str, reactor: Any) -> None:
        self.svc, self.node, self.reactor = svc, node, reactor
        self.live: dict[int, Progress] = {}
        self._swept = False
        self._waiting: list[defer.Deferred[None]] | None = None

    # -- the first touch: jobs this node left unfinished ------------------
    async def _ready(self) -> None:
        if self._swept:
            return
        if self._waiting is not None:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(d)
            await d
            return
        self._waiting = []
        try:
            n = await self.svc.pool.transaction(self._sweep)
            if n:
                log.warn("{count} import job(s) of node {node} were interrupted by a restart",
                         count=n, node=self.node)
        finally:
            self._swept = True
            waiting, self._waiting = self._waiting, None
            for w in waiting:
                w.callback(None)

    def _sweep(self, conn: sa.Connection) -> int:
        return conn.execute(directory_jobs.update().where(
            J.node == self.node, J.state.in_(("queued", "running"))).values(
            state="failed", error=INTERRUPTED, finished=_now())).rowcount

    # -- the API's operations ---------------------------------------------
    def _check(self, actor: Actor, kind: str) -> str:
        if kind not in KINDS:
            raise NotFound(f"no import of {kind!r} (members, departments, groups)")
        method, function = KINDS[kind]
        self.svc._need(actor, function)
        if kind == "groups":
            self.svc._groups_admin(actor)
        return method

    async def start(self, actor: Actor, kind: str, text: str) -> dict[str, Any]:
        method = self._check(actor, kind)
        await self._ready()

        def thd(conn: sa.Connection) -> Any:
            ent = self.svc._enterprise(conn, actor, None)
            jid = conn.execute(directory_jobs.insert().values(
                enterprise_id=ent.id, kind=f"import.{kind}", state="queued",
                actor=actor.name[:320], node=self.node[:64], rows_total=count_rows(text),
                created=_now())).inserted_primary_key[0]
            return conn.execute(sa.select(directory_jobs).where(J.id == jid)).one()

        row = await self.svc.pool.transaction(thd)
        progress = Progress(self.reactor)
        progress.total = row.rows_total
        self.live[row.id] = progress
        d = defer.Deferred.fromCoroutine(self._run(row.id, actor, method, text, progress))
        d.addErrback(lambda f: log.failure("import job {job} failed to finish", f, job=row.id))
        return self._out(row)

    async def _run(self, jid: int, actor: Actor, method: str, text: str,
                   progress: Progress) -> None:
        await self._update(jid, state="running", started=_now())
        values: dict[str, Any] = {}
        try:
            result = await getattr(self.svc, method)(actor, text, None, progress=progress)
            values = {"state": "done", "result": result}
        except ServiceError as e:
            values = {"state": "failed",
                      "error": {"code": e.code, "status": e.status, "message": e.message}}
        except DirectoryError as e:
            values = {"state": "failed",
                      "error": {"code": "invalid", "status": 422, "message": str(e)}}
        except Exception:
            log.failure("import job {job} ({method}) failed", job=jid, method=method)
            values = {"state": "failed", "error": {
                "code": "internal", "status": 500, "message": "internal error (see the log)"}}
        log.info("import job {job} {state}", job=jid, state=values["state"],
                 rows=progress.total)
        await self._update(jid, rows_total=progress.total, rows_done=progress.done,
                           finished=_now(), **values)
        self.live.pop(jid, None)

    async def _update(self, jid: int, **values: Any) -> None:
        def thd(conn: sa.Connection) -> None:
            conn.execute(directory_jobs.update().where(J.id == jid).values(**values))

        await self.svc.pool.transaction(thd)

    def _visible(self, conn: sa.Connection, actor: Actor) -> list[Any]:
        ent = self.svc._enterprise(conn, actor, None)
        where = [J.enterprise_id == ent.id]
        if actor.graded:  # a graded admin sees the jobs it started
            where.append(J.actor == actor.name[:320])
        return where

    async def get(self, actor: Actor, jid: int) -> dict[str, Any]:
        await self._ready()

        def thd(conn: sa.Connection) -> Any:
            return conn.execute(sa.select(directory_jobs).where(
                J.id == jid, *self._visible(conn, actor))).first()

        row = await self.svc.pool.do(thd)
        if row is None:
            raise NotFound(f"no job {jid}")
        return self._out(row)

    async def list(self, actor: Actor, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        await self._ready()

        def thd(conn: sa.Connection) -> tuple[int, list[Any]]:
            where = self._visible(conn, actor)
            total = conn.execute(sa.select(sa.func.count()).select_from(directory_jobs)
                                 .where(*where)).scalar_one()
            rows = conn.execute(sa.select(directory_jobs).where(*where)
                                .order_by(J.id.desc()).limit(limit).offset(offset)).all()
            return total, rows

        total, rows = await self.svc.pool.do(thd)
        items = [self._out(r) for r in rows]
        nxt = offset + len(items) if offset + len(items) < total else None
        return {"items": items, "total": total, "limit": limit, "offset": offset,
                "next_offset": nxt}

    def _out(self, row: Any) -> dict[str, Any]:
        live = self.live.get(row.id) if row.state in ("queued", "running") else None
        out = {"id": row.id, "kind": row.kind, "state": row.state, "phase": None,
               "rows_total": row.rows_total, "rows_done": row.rows_done, "progress": None,
               "result": row.result, "error": row.error, "created": row.created,
               "started": row.started, "finished": row.finished}
        if live is not None:
            out.update(phase=live.phase, rows_total=live.total, rows_done=live.done,
                       progress=round(live.fraction, 4))
        elif row.state == "done":
            out["progress"] = 1.0
        elif row.state == "queued":
            out["progress"] = 0.0
        return out


def jobs_of(svc: Any, reactor: Any) -> ImportJobs:
    """This process's job runner for a DirectoryService (one per daemon)."""
    jobs = getattr(svc, "_import_jobs", None)
    if jobs is None:
        jobs = svc._import_jobs = ImportJobs(svc, svc.store.cfg.server.node_id, reactor)
    return jobs

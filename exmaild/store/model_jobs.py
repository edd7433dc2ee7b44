"""Background jobs of the admin API (CSV imports), kept in model.metadata.

A job is scoped to its enterprise and names the node (`[server] node_id`)
that runs it, so a restarted node can mark its own unfinished jobs
interrupted without touching another node's. The CSV itself is never
stored (it may hold passwords).
"""

from __future__ import annotations

import sqlalchemy as sa

from exmaild.store.model import metadata

directory_jobs = sa.Table(
    "directory_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(32), nullable=False),  # import.members, import.departments …
    sa.Column("state", sa.String(16), nullable=False),  # queued, running, done, failed
    sa.Column("actor", sa.String(320), nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("rows_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("started", sa.BigInteger, nullable=True),
    sa.Column("finished", sa.BigInteger, nullable=True),
    sa.Index(None, "enterprise_id", "id"),
    sa.Index(None, "node", "state"),
)

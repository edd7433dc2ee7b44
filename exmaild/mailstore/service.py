"""The store service with mail ingestion: what the daemon and the tests open.

store/ knows nothing of mailstore/ (layers point down), so the Ingestor (which
parses, so it lives here) and its spool are added on top of store/'s service.
"""

from __future__ import annotations

from typing import Any

from exmaild.config import Config
from exmaild.mailstore.ingest import Ingestor
from exmaild.mailstore.spool import Spooler
from exmaild.store.connector import Store


class MailStore(Store):
    """`Store` plus `ingestor`, the one ingest path (SMTP, APPEND, reports)."""

    def __init__(self, cfg: Config, reactor: Any = None) -> None:
        super().__init__(cfg, reactor)
        spooler = Spooler(cfg.data_dir / "spool", cfg.limits.spool_threshold,
                          cfg.limits.inflight_memory, cfg.limits.spool_disk)
        self.ingestor = Ingestor(self.pool, self.segments, self.notifier, spooler,
                                 text_chars=cfg.search.max_text_chars)

    def open(self, *, create_schema: bool = True) -> str:
        state = super().open(create_schema=create_schema)
        self.ingestor.spooler.open()  # makes <data>/spool and empties it
        return state

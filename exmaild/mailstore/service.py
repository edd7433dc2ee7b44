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


def make_ingestor(cfg: Config, store: Store) -> Ingestor:
    """The one ingest path over `store`, with its spool (opened by the caller)."""
    spooler = Spooler(cfg.data_dir / "spool", cfg.limits.spool_threshold,
                      cfg.limits.inflight_memory, cfg.limits.spool_disk)
    return Ingestor(store.pool, store.segments, store.notifier, spooler,
                    in_database=store.blobs_in_database,
                    text_chars=cfg.search.max_text_chars, metrics=store.metrics)


class MailStore(Store):
    """`Store` plus `ingestor`, the one ingest path (SMTP, APPEND, reports)."""

    def __init__(self, cfg: Config, reactor: Any = None) -> None:
        super().__init__(cfg, reactor)
        self.ingestor = make_ingestor(cfg, self)

    def open(self, *, create_schema: bool = True) -> str:
        state = super().open(create_schema=create_schema)
        self.ingestor.spooler.open()  # makes <data>/spool and empties it
        return state

"""The store service with mail ingestion: what the daemon and the tests open.

store/ knows nothing of mailstore/ (layers point down), so the Ingestor (which
parses, so it lives here) is added on top of store/'s service, here.
"""

from __future__ import annotations

from typing import Any

from exmaild.config import Config
from exmaild.mailstore.ingest import Ingestor
from exmaild.store.connector import Store


class MailStore(Store):
    """`Store` plus `ingestor`, the one ingest path (SMTP, APPEND, reports)."""

    def __init__(self, cfg: Config, reactor: Any = None) -> None:
        super().__init__(cfg, reactor)
        self.ingestor = Ingestor(self.pool, self.segments, self.notifier)

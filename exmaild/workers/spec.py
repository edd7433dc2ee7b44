"""What a worker process is told by its supervisor (see worker.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerSpec:
    index: int  # 1..N, in log lines and the node id
    # listener name -> (inherited descriptor, address family) to serve
    listen: dict[str, tuple[int, int]] = field(default_factory=dict)
    link: Any = None  # channel.ParentLink: the pipes to the supervisor

"""Where the daemon and exmailctl find their configuration file.

Both look in the same places, in this order, so `exmailctl` run from any
directory works on the daemon's database: `--config FILE`, then the
`EXMAILD_CONFIG` environment variable, then `./exmaild.toml`, then
`/etc/exmaild/exmaild.toml`. With none of them, the embedded defaults apply
(data in `./var`).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EXMAILD_CONFIG"
SYSTEM_CONFIG = Path("/etc/exmaild/exmaild.toml")
LOCAL_NAME = "exmaild.toml"


def candidates() -> list[Path]:
    """The files looked at when no --config is given, in order."""
    return [Path(LOCAL_NAME), SYSTEM_CONFIG]


def find_config(explicit: str | None) -> str | None:
    """The config file to load, or None for the embedded defaults.

    An explicit path or EXMAILD_CONFIG is returned even when the file is
    missing, so that loading it says so instead of falling back silently.
    """
    if explicit:
        return explicit
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    for path in candidates():
        if path.is_file():
            return str(path)
    return None


def describe(path: str | None) -> str:
    """The config source in words, for `db status` and the start-up line."""
    if path is None:
        looked = ", ".join(str(p) for p in candidates())
        return f"none (embedded defaults; looked for --config, ${ENV_VAR}, {looked})"
    return str(Path(path).resolve())

"""Schemathesis against the live admin API (issue #10: the OpenAPI document
checked by a property-based fuzzer: no 500, no schema violation).

    python3 bench/api_fuzz.py [--schemathesis PATH] [--max-examples 20] [--seed N]
                              [--database-url URL] [ARGS...]

The same runs as tests/test_api_fuzz.py (tests/apifuzz.py: the real daemon
through twistd on a fresh data directory with a small enterprise, then
`schemathesis run` with every check, once with a member's session for /me and
once with an API token for the rest), with more cases per operation. Extra
arguments go to schemathesis. Exits with its status.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.apifuzz import run, seed  # noqa: E402
from tests.daemon import Daemon  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemathesis", default=None, help="its executable (default: found)")
    ap.add_argument("--max-examples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database-url", default="")
    a, extra = ap.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="exmaild-apifuzz-") as tmp:
        work = Path(tmp)
        setup = seed(work, a.database_url)
        d = Daemon(setup.config, setup.ports, work)
        d.start(wait=120)
        try:
            rc, out, seconds = run(setup, work, max_examples=a.max_examples,
                                   seed_value=a.seed, extra=tuple(extra),
                                   binary=a.schemathesis)
        finally:
            d.stop()
        print(out)
        print(f"schemathesis: {seconds:.1f} s, exit {rc}")
        tb = "Traceback" in d.output()
        if tb:
            print(d.output()[-5000:])
        return rc or (1 if tb else 0)


if __name__ == "__main__":
    sys.exit(main())

"""The OpenAPI document against the live daemon, by schemathesis (issue #10):
every operation, positive and negative data, the coverage, fuzzing and
stateful phases, every check (no 500, status codes, content types, response
schemas, negative data refused, Allow headers, ...; see tests/apifuzz.py).
Bounded for the suite: a fixed seed, EXMAILD_API_FUZZ_EXAMPLES cases per
operation (default 5) and the phases in EXMAILD_API_FUZZ_PHASES (default
examples,fuzzing,stateful: the coverage phase, every boundary of every schema,
takes minutes; `all` adds it, as bench/api_fuzz.py does by default)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .apifuzz import run, schemathesis_bin, seed
from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon

EXAMPLES = int(os.environ.get("EXMAILD_API_FUZZ_EXAMPLES", "5"))
PHASES = os.environ.get("EXMAILD_API_FUZZ_PHASES", "examples,fuzzing,stateful")

pytestmark = pytest.mark.skipif(schemathesis_bin() is None,
                                reason="schemathesis is not installed (the test extra)")


def test_openapi_document_holds_against_the_live_server(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db_url = ""
    if PG_URL:  # the daemon on PostgreSQL when the test database is configured
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    setup = seed(tmp_path, db_url)
    d = Daemon(setup.config, setup.ports, tmp_path)
    d.start(wait=120)
    try:
        extra = () if PHASES == "all" else ("--phases", PHASES)
        rc, out, seconds = run(setup, tmp_path, max_examples=EXAMPLES, extra=extra)
    finally:
        d.stop()
    print(f"schemathesis: {seconds:.1f} s")
    assert "Traceback" not in d.output(), d.output()[-5000:]
    assert rc == 0, out[-20000:]
    # Both runs tested their operations (35 of /me, the rest) and found nothing.
    assert out.count("No issues found") == 2, out[-5000:]
    tested = [int(line.split()[1]) for line in out.splitlines()
              if line.strip().startswith("Tested:")]
    assert len(tested) == 2 and min(tested) >= 30 and sum(tested) >= 100, tested

"""Schemathesis against the live admin API (issue #10: the OpenAPI document
checked by a property-based fuzzer: no 500, no schema violation).

    python3 bench/api_fuzz.py [--schemathesis PATH] [--max-examples 20] [ARGS...]

Starts the real daemon (twistd) on a fresh SQLite data directory with one
enterprise, a domain, a few members, a department, a group and an API token,
then runs `schemathesis run` (a separate install: `pip install schemathesis`,
e.g. in its own venv; exmaild does not depend on it) on
`/api/v1/openapi.json` with the token, and exits with its status. Extra
arguments go to schemathesis. Too slow for the test suite (minutes); the
suite's tests/test_admin_api.py probes every route with hypothesis instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, exmailctl, write_config  # noqa: E402


def ctl(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    if r.returncode != 0:
        raise SystemExit(f"exmailctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemathesis", default=shutil.which("schemathesis") or "schemathesis")
    ap.add_argument("--max-examples", type=int, default=20)
    a, extra = ap.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="exmaild-apifuzz-") as tmp:
        work = Path(tmp)
        config, ports = write_config(work)
        ctl(config, "enterprise", "add", "Acme")
        ctl(config, "domain", "add", "acme.test")
        ctl(config, "dept", "add", "Sales")
        for who in ("ann", "bob"):
            ctl(config, "user", "add", f"{who}@acme.test", "--password-stdin", "--dept",
                "Sales", stdin="Secret123x\n")
        ctl(config, "group", "add", "team@acme.test", "--member", "ann@acme.test")
        ctl(config, "tag", "add", "Managers")
        token = ctl(config, "token", "create", "--name", "fuzz").strip()
        d = Daemon(config, ports, work)
        d.start(wait=120)
        base = f"http://127.0.0.1:{ports['admin']}"
        try:
            with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=30) as r:
                (work / "openapi.json").write_text(json.dumps(json.loads(r.read())))
            cmd = [a.schemathesis, "run", str(work / "openapi.json"), "--url", base,
                   "-H", f"Authorization: Bearer {token}",
                   "--max-examples", str(a.max_examples), "--checks", "all",
                   # The fuzzer would revoke its own token (DELETE /auth/session,
                   # /tokens/{id}) and then rightly get 401 for everything else.
                   "--exclude-operation-id", "logout",
                   "--exclude-operation-id", "revoke_token", *extra]
            print(" ".join(cmd[:2] + ["..."] + cmd[4:]), flush=True)
            rc = subprocess.call(cmd, cwd=work)  # its .schemathesis cache goes there too
        finally:
            d.stop()
        tb = "Traceback" in d.output()
        if tb:
            print(d.output()[-5000:])
        return rc or (1 if tb else 0)


if __name__ == "__main__":
    sys.exit(main())

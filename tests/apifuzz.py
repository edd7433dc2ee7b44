"""Schemathesis against the live admin API: the small enterprise it runs on
and the two runs (admin token, then a member's own session for /me), shared
by tests/test_api_fuzz.py and bench/api_fuzz.py.

The runs use every schemathesis check. One is tuned, not dropped:
"positive data acceptance" also accepts 422, the documented answer to a
request the schema allows but a rule refuses (an address in a domain the
enterprise does not have, a department that does not exist, a weak
password); tests/apifuzz_hooks.py adds the stricter check that keeps it
honest: schema-valid input is never refused by the server's own schema check
(those refusals name the `field`) and never answered 400. An operation that
answers only 401/403 (credentials that do not work) fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .daemon import exmailctl, write_config

HERE = Path(__file__).resolve().parent
PW = "Secret123x"
# Operations that end the fuzzer's own credentials (it would then rightly get
# 401 for everything after).
SELF_REVOKING = ("logout", "revoke_token")
CONFIG = """\
[checks.positive_data_acceptance]
# 422: schema-valid, refused by a rule the schema cannot state (see apifuzz.py)
expected-statuses = ["2XX", "401", "403", "404", "409", "422"]

[warnings]
# The token must work: an operation answering only 401/403 fails the run.
display = ["missing_auth"]
fail-on = ["missing_auth"]
"""


@dataclass
class Setup:
    config: Path
    ports: dict[str, int]
    admin_token: str


def schemathesis_bin() -> str | None:
    """The schemathesis next to this Python (the `test` extra), else on PATH."""
    near = Path(sys.executable).parent / "schemathesis"
    return str(near) if near.exists() else shutil.which("schemathesis")


def _ctl(config: Path, *args: str, stdin: str | None = None) -> str:
    r = exmailctl(config, *args, stdin=stdin)
    if r.returncode != 0:
        raise RuntimeError(f"exmailctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def seed(work: Path, db_url: str = "") -> Setup:
    """A config and an enterprise with a domain, members, a department, a
    group, a tag, a business mailbox and an API token."""
    config, ports = write_config(work, db_url)
    _ctl(config, "enterprise", "add", "Acme")
    _ctl(config, "domain", "add", "acme.test")
    _ctl(config, "dept", "add", "Sales")
    for who in ("ann", "bob"):
        _ctl(config, "user", "add", f"{who}@acme.test", "--password-stdin", "--dept",
             "Sales", stdin=f"{PW}\n")
    _ctl(config, "group", "add", "team@acme.test", "--member", "ann@acme.test")
    _ctl(config, "tag", "add", "Managers")
    _ctl(config, "shared", "add", "desk@acme.test", "--assign", "bob@acme.test")
    token = _ctl(config, "token", "create", "--name", "fuzz").strip()
    return Setup(config, ports, token)


def _post(url: str, body: dict[str, str]) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run(setup: Setup, work: Path, *, max_examples: int, seed_value: int = 1,
        extra: tuple[str, ...] = (), binary: str | None = None) -> tuple[int, str, float]:
    """Both runs; (exit status, their output, seconds)."""
    st = binary or schemathesis_bin()
    if st is None:
        raise RuntimeError("schemathesis is not installed (pip install -e '.[test]')")
    base = f"http://127.0.0.1:{setup.ports['admin']}"
    with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=30) as r:
        (work / "openapi.json").write_text(json.dumps(json.loads(r.read())))
    (work / "schemathesis.toml").write_text(CONFIG)
    member = _post(base + "/api/v1/me/login", {"address": "ann@acme.test", "password": PW})
    common = [st, "run", str(work / "openapi.json"), "--url", base, "--checks", "all",
              "--max-examples", str(max_examples), "--seed", str(seed_value),
              "--generation-database", "none", "--no-color", "--workers", "1",
              "--request-timeout", "60"]
    for op in SELF_REVOKING:
        common += ["--exclude-operation-id", op]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "apifuzz_hooks",
           "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # The member first: the admin run may disable or delete that member.
    runs = [["-H", f"Authorization: Bearer {member['token']}", "--include-tag", "me"],
            ["-H", f"Authorization: Bearer {setup.admin_token}", "--exclude-tag", "me"]]
    out, rc, t0 = [], 0, time.monotonic()
    for args in runs:
        p = subprocess.run([*common, *args, *extra], cwd=work, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        out.append(p.stdout)
        rc = rc or p.returncode
    return rc, "\n".join(out), time.monotonic() - t0

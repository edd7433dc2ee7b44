"""A private rspamd for the tests: Debian's binary with a minimal
configuration in a temporary directory (own ports on 127.0.0.1, no
network lookups), whose one Lua rule scores by the Subject: so a test picks
rspamd's action. Also the controller (training), password "secret"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from .conftest import free_ports

RSPAMD = shutil.which("rspamd") or (os.path.exists("/usr/bin/rspamd") and "/usr/bin/rspamd")
SKIP_REASON = "rspamd is not installed (Debian package rspamd; .ci/run installs it)"
PASSWORD = "secret"

CONF = """
options {{
  pidfile = "{d}/rspamd.pid";
  dbdir = "{d}";
  filters = "";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
worker "normal" {{ bind_socket = "127.0.0.1:{normal}"; count = 1; mime = true; }}
worker "controller" {{
  bind_socket = "127.0.0.1:{controller}"; count = 1;
  password = "{password}"; enable_password = "{password}";
}}
lua = "{d}/rules.lua";
"""

# Score by Subject: SPAM-REJECT 20 (reject), SPAM-HEADER 8 (add header),
# SPAM-GREY 4.5 (greylist); anything else 0 (no action).
RULES = """
rspamd_config:register_symbol({
  name = 'EXMAILD_TEST_SUBJECT',
  score = 1.0,
  callback = function(task)
    local s = task:get_subject() or ''
    if s:find('SPAM%-REJECT') then return true, 20.0, 'reject' end
    if s:find('SPAM%-HEADER') then return true, 8.0, 'header' end
    if s:find('SPAM%-GREY') then return true, 4.5, 'grey' end
    return false
  end
})
"""


class Rspamd:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.normal, self.controller = free_ports(2)
        (self.dir / "rules.lua").write_text(RULES)
        (self.dir / "rspamd.conf").write_text(CONF.format(
            d=self.dir, normal=self.normal, controller=self.controller, password=PASSWORD))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller}"

    def start(self) -> None:
        assert RSPAMD
        # As root rspamd wants a user to run as (root here: the temp dir is ours).
        who = ["-u", "root", "-g", "root"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [RSPAMD, "-f", "-c", str(self.dir / "rspamd.conf"), *who],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120  # generous: 2 cores shared by many tests
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=5) as r:
                    if r.read().strip() == b"pong":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        log = (self.dir / "rspamd.log")
        raise RuntimeError("rspamd did not start: " + (log.read_text()[-2000:]
                                                       if log.exists() else "no log"))

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # main process and its workers
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

"""SMTP ingest with 20 Sieve rules per recipient beside ingest with none.

    python3 bench/sieve_ingest.py [--messages 3000] [--sessions 10] [--size 4096]
                                  [--rounds 3] [--database-url URL]

One daemon (twistd, as deployed), one member; rounds alternate between no
active script and a 20-rule script (header, address, body and size tests,
none of which matches smtp-source's payload, plus flags), switched with
`exmailctl sieve activate`. Every acknowledged message must be in INBOX.
Issue 13 allows the rules at most 10% of the rate.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from smtp_ingest import USER, Exmaild  # noqa: E402

RULES = ['require ["fileinto", "imap4flags", "body", "relational", "comparator-i;ascii-numeric"];']
for i in range(20):
    kind = i % 4
    if kind == 0:
        RULES.append(f'if header :contains "subject" "project-{i}" {{ fileinto "P{i}"; }}')
    elif kind == 1:
        RULES.append(f'if address :domain :is "from" "vendor{i}.example" {{ addflag "v{i}"; }}')
    elif kind == 2:
        RULES.append(f'if body :contains "invoice number {i}" {{ fileinto "Invoices"; }}')
    else:
        RULES.append(f'if allof (size :over {100 + i}M, header :value "ge" '
                     f':comparator "i;ascii-numeric" "x-priority" "{i}") {{ discard; }}')
SCRIPT = "\n".join(RULES) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database-url", default="")
    args = ap.parse_args()
    from reference import smtp_ingest

    from tests.daemon import exmailctl

    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-sieve-"))
    rates: dict[str, list[float]] = {"none": [], "20 rules": []}
    try:
        with Exmaild(work, args.database_url) as ex:
            path = work / "rules.sieve"
            path.write_text(SCRIPT)
            for cmd in (("sieve", "put", USER, "rules", str(path)),):
                r = exmailctl(ex.config, *cmd)
                if r.returncode:
                    raise RuntimeError(r.stderr)
            smtp_ingest("127.0.0.1", ex.port, 200, args.sessions, args.size, USER)  # warm-up
            for rnd in range(args.rounds):
                for mode in ("none", "20 rules"):
                    r = exmailctl(ex.config, "sieve", "activate", USER,
                                  "rules" if mode != "none" else "")
                    if r.returncode:
                        raise RuntimeError(r.stderr)
                    time.sleep(6)  # another process's change: seen after lookup_cache_ttl
                    res = ex.run(args.messages, args.sessions, args.size)
                    rates[mode].append(res["msg_per_s"])
                    print(f"round {rnd + 1}: {mode:<9} {res['msg_per_s']:7.0f} msg/s "
                          f"({res['cpu_ms_per_msg']:.2f} ms CPU per message)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    none, rules = statistics.median(rates["none"]), statistics.median(rates["20 rules"])
    print(f"\nmedian: none {none:.0f} msg/s, 20 rules {rules:.0f} msg/s "
          f"({(1 - rules / none) * 100:+.1f}% cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

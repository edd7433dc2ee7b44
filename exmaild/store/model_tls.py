"""Tables of outbound TLS policy (exmaild/queue/mtasts.py, tlsrpt.py), kept
apart from model.py; they live in the one `metadata`."""

from __future__ import annotations

import sqlalchemy as sa

from exmaild.store.model import metadata

# RFC 8461 §5.1: a receiving domain's MTA-STS policy as last fetched, shared by
# every node and kept across restarts; used until `expires` (fetched + max_age).
mta_sts_policies = sa.Table(
    "mta_sts_policies",
    metadata,
    sa.Column("domain", sa.String(253), primary_key=True),
    sa.Column("policy_id", sa.String(32), nullable=False),  # the TXT record's id=
    sa.Column("mode", sa.String(8), nullable=False),  # enforce | testing | none
    sa.Column("mx", sa.Text, nullable=False),  # the mx: patterns, one a line
    sa.Column("max_age", sa.BigInteger, nullable=False),
    sa.Column("fetched", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=False),
)

# RFC 8460: per UTC day and receiving domain, how many TLS sessions succeeded
# or failed (and why), for `exmailctl tlsrpt report`.
tls_report_counts = sa.Table(
    "tls_report_counts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("day", sa.String(10), nullable=False),  # YYYY-MM-DD, UTC
    sa.Column("domain", sa.String(253), nullable=False),
    sa.Column("policy_type", sa.String(16), nullable=False),  # sts | tlsa | no-policy-found
    sa.Column("mx_host", sa.String(253), nullable=False, server_default=""),
    sa.Column("result", sa.String(40), nullable=False),  # success, or an RFC 8460 failure type
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("day", "domain", "policy_type", "mx_host", "result"),
)

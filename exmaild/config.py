"""TOML configuration parsed into frozen dataclasses.

Every section is a dataclass whose fields are the section's keys; the loader
walks them generically so a new section is one dataclass added to `Config`.
All errors are collected and reported together, each with its key path, and
unknown keys are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exmaild.netutil import parse_hostport
from exmaild.spam.config import SpamConfig, validate_spam

DEFAULT_PORTS: dict[str, int] = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "pop3": 2110,
    "pop3s": 2995,
    # Not 8080 (a busy default: proxies, dev servers, Jenkins, Tomcat).
    "admin": 2880,
    # Mail client autoconfiguration (exmaild/autoconfig.py), plain HTTP; put
    # it behind the web server that answers autoconfig.<domain> and
    # autodiscover.<domain>, or bind it to port 80 itself.
    "autoconfig": 2080,
    # ManageSieve (RFC 5804; 4190 in production).
    "managesieve": 24190,
}
TLS_SERVICES = frozenset({"submissions", "imaps", "pop3s"})


class ConfigError(Exception):
    """One or more configuration errors; `errors` lists them all."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class PathsConfig:
    data: str = "./var"


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = field(default_factory=socket.getfqdn)
    # Names this node's blob segments so nodes sharing a blob volume never collide.
    node_id: str = "node1"
    # Seconds a cluster lock (POP3 maildrop, maintenance leadership) outlives
    # its holder's last renewal: how long a crashed process keeps them.
    lock_lease: int = 60
    # Processes serving the listeners (docs/workers.md): 1 is the single
    # daemon process; N > 1 makes twistd a supervisor of N worker processes.
    workers: int = 1


# Beyond this a worker costs more (its own DB pool, caches, descriptors)
# than another core's share can give back.
MAX_WORKERS = 64


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty: SQLite file under [paths] data.
    url: str = ""
    pool_size: int = 4
    # SQLite only: bytes of the database file read through mmap instead of
    # read(2) (0: off). A SEARCH over 100,000 messages took 240 ms without
    # and 92 ms with it. The pages are the OS page cache, shared and
    # reclaimable, but they count in the process's RSS (RssFile).
    sqlite_mmap_size: int = 1 << 30
    # Rows a maintenance job (retention sweep, queue status purge) changes in
    # one transaction: between batches the writer is free for SMTP and IMAP
    # (SQLite has one writer at a time).
    maintenance_batch: int = 500


# Mozilla "intermediate" without DHE: forward secrecy and AEAD for TLS 1.2.
AEAD_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


@dataclass(frozen=True)
class TLSConfig:
    cert: str = ""
    key: str = ""
    # Serve the admin listener (/healthz and the admin API) over TLS only.
    admin: bool = False
    # Certificates per host name (SNI): a directory of NAME.crt + NAME.key
    # (or NAME.pem holding both) and of certbot-style NAME/fullchain.pem +
    # NAME/privkey.pem; each serves the DNS names in its certificate.
    sni_dir: str = ""
    # Lowest protocol version: "1.2" or "1.3".
    min_version: str = "1.2"
    # TLS 1.2 suites (OpenSSL syntax): ECDHE with AEAD only, no CBC (LUCKY13).
    ciphers: str = AEAD_CIPHERS
    # Seconds a TLS session can be resumed (session IDs, stateful tickets).
    session_timeout: int = 86400


@dataclass(frozen=True)
class ListenConfig:
    smtp: str = str(DEFAULT_PORTS["smtp"])
    submission: str = str(DEFAULT_PORTS["submission"])
    submissions: str = str(DEFAULT_PORTS["submissions"])
    imap: str = str(DEFAULT_PORTS["imap"])
    imaps: str = str(DEFAULT_PORTS["imaps"])
    pop3: str = str(DEFAULT_PORTS["pop3"])
    pop3s: str = str(DEFAULT_PORTS["pop3s"])
    admin: str = str(DEFAULT_PORTS["admin"])
    autoconfig: str = str(DEFAULT_PORTS["autoconfig"])
    managesieve: str = str(DEFAULT_PORTS["managesieve"])


@dataclass(frozen=True)
class ProxyConfig:
    # Listeners (their [listen] keys) behind a balancer that sends the PROXY header.
    listeners: tuple[str, ...] = ()
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    timeout: float = 10.0  # seconds a connection may take to send its header


@dataclass(frozen=True)
class LogConfig:
    # Empty: readable lines on stdout (twistd's own log).
    file: str = ""
    # Empty: <data>/log/exmaild.json; "-" disables the JSON-lines log.
    json_file: str = ""
    level: str = "info"
    # Days the mail log (table mail_log, docs/mail-log.md) keeps its rows.
    mail_retention_days: int = 180


@dataclass(frozen=True)
class AuthConfig:
    # Allow passwords over plaintext connections from 127.0.0.0/8 and ::1.
    allow_plaintext_loopback: bool = True
    # Threads that run argon2 verifications (apart from the database threads,
    # so a login storm cannot hold up mail delivery).
    threads: int = 2
    # Seconds a verified password is remembered (as a keyed hash, in memory
    # only) so a client's next connections skip argon2; 0: always verify.
    # Changing the password ends it at once (Dovecot's auth_cache_ttl).
    cache_ttl: int = 3600
    # argon2id parameters for new password hashes (RFC 9106's second
    # recommendation: 3 passes over 64 MiB, 4 lanes). A login whose stored
    # hash has other parameters rehashes it with these.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # Brute-force throttling (exmaild/auth/throttle.py, docs/login-security.md).
    throttle: bool = True
    # Failures counted per (account, source IP) and per source IP before
    # further attempts are refused for a while ([UNAVAILABLE], 454 4.7.0).
    throttle_account_failures: int = 5
    throttle_ip_failures: int = 20
    # Seconds failures are remembered after the last one (and a refusal lasts).
    throttle_window: int = 900
    # The answer to a failed login is delayed by throttle_delay * 2^(failures-1)
    # seconds, at most throttle_max_delay (Dovecot's auth penalty).
    throttle_delay: float = 1.0
    throttle_max_delay: float = 15.0
    # Sources never throttled: local webmail or relays that log in for many
    # users from one address (they must throttle by the real client themselves).
    throttle_exempt: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # Days the login log keeps its rows before the daily sweep removes them.
    login_log_days: int = 180


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = 50 * 1024 * 1024
    line_length: int = 8192
    recipients: int = 1000
    smtp_errors: int = 20
    smtp_idle_timeout: int = 300
    # Largest literal of any IMAP command but APPEND (0: message_size).
    imap_literal_size: int = 64 * 1024
    imap_autologout: int = 1800
    imap_nesting_depth: int = 32
    imap_line_length: int = 65536  # longest IMAP command line (long UID sets)
    imap_subscriptions: int = 10000  # subscribed names per account (they outlive mailboxes)
    pop3_idle_timeout: int = 600
    pop3_login_delay: int = 0  # seconds between POP3 logins of one account; 0: none
    # Messages being received (SMTP DATA, IMAP APPEND): the first
    # `spool_threshold` octets of each are kept in memory, the rest goes to a
    # file in <data>/spool; all such in-memory heads together take at most
    # `inflight_memory` octets, beyond which messages go to disk at once.
    spool_threshold: int = 256 * 1024
    inflight_memory: int = 64 * 1024 * 1024
    # Octets in all spool files together (0: as much as the file system has);
    # a message that does not fit is refused with a temporary error.
    spool_disk: int = 0
    # -- connections and flow control (docs/limits.md) ---------------------
    # Connections of all listeners together; 0: derived from RLIMIT_NOFILE.
    max_connections: int = 0
    # Connections of one listener; 0: three quarters of max_connections.
    max_connections_per_listener: int = 0
    # Connections of one listener from one source address; 0: 100 (or less,
    # when the listener's pre-login share is smaller).
    max_connections_per_ip: int = 0
    # Not yet logged-in connections of one listener (all of an MX listener's);
    # 0: max_connections shared equally among the listeners.
    max_preauth_connections: int = 0
    # Seconds an IMAP or POP3 client has to log in.
    preauth_timeout: int = 60
    # Connections the kernel completes for a listener before the daemon
    # accepts them (listen(2) backlog; the kernel caps it at
    # net.core.somaxconn). Too small, a burst of clients (all of them
    # reconnecting after a restart) overflows it: see docs/limits.md.
    listen_backlog: int = 4096
    # Bytes queued for a client that does not read before its commands wait.
    output_buffer: int = 256 * 1024
    # Bytes of a client's input held unprocessed (pipelined commands, input
    # sent while a command waits) before reading from it stops.
    input_buffer: int = 256 * 1024


@dataclass(frozen=True)
class SMTPConfig:
    # Offer AUTH on the MX listener (port 25) too, over TLS only. Off: members
    # submit on 465/587 (manual §6.2.1), as Postfix offers AUTH by default.
    mx_auth: bool = False
    # Seconds RCPT checks may reuse a looked-up domain list or account (each
    # node's own cache); 0 looks up every time.
    lookup_cache_ttl: float = 5.0
    # Failed AUTH attempts in one connection before it is closed.
    max_auth_failures: int = 3


@dataclass(frozen=True)
class BlobsConfig:
    # Where message contents are kept: "segments" (files under the data
    # directory, the default) or "postgresql" (chunks in the database, so
    # nodes sharing one PostgreSQL need no shared file system). Either way
    # the daemon reads contents from both; this picks where new ones go
    # (docs/blobs.md; `exmailctl blobs migrate` moves the stored ones).
    backend: str = "segments"
    # A segment is sealed at this size; compaction rewrites segments whose live
    # bytes fall under `compact_ratio` of their size.
    segment_size: int = 64 * 1024 * 1024
    compact_ratio: float = 0.5
    # A writing process holds its active segment for this many seconds and
    # renews the hold while it runs; compaction may seal a segment whose
    # writer let it run out (a crashed process). See store/blobs.py.
    segment_lease: int = 300
    # Segment files kept open for reading (least recently used are closed).
    max_open_segments: int = 256


@dataclass(frozen=True)
class QueueConfig:
    """Outbound delivery (exmaild/queue). Times are seconds; Postfix's defaults."""

    # Wait before each retry; the last value repeats (Postfix doubles 300 s up to ~1 h).
    retry_schedule: tuple[int, ...] = (300, 600, 1200, 2400, 3600)
    lifetime: int = 5 * 86400  # give up (expired DSN) after this long in the queue
    bounce_lifetime: int = 5 * 86400  # the same for null-sender mail (DSNs)
    delay_warning: int = 4 * 3600  # one "still trying" DSN after this long; 0: never
    scan_interval: float = 5.0  # how often the database is asked for due recipients
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    remote_port: int = 25
    dns_servers: tuple[str, ...] = ()  # "ip" or "ip:port"; empty: /etc/resolv.conf
    dns_timeout: float = 10.0
    relayhost: str = ""  # smarthost: "host:port" (MX lookup) or "[host]:port" (no MX lookup)
    relayhost_tls: str = "may"  # none | may | starttls | tls
    relayhost_user: str = ""
    relayhost_password: str = ""
    tls_verify: bool = False  # require STARTTLS with a verified certificate
    tls_ca_file: str = ""  # trust anchors for tls_verify and MTA-STS; empty: the system store
    mta_sts: bool = True  # honour receivers' MTA-STS policies (RFC 8461)
    mta_sts_port: int = 443  # HTTPS port of policy fetches (tests point it elsewhere)
    dane: bool = False  # check TLSA records of MX hosts (RFC 7672); needs dns_trust_ad
    dns_trust_ad: bool = False  # the dns_servers validate DNSSEC: trust their AD bit
    helo_name: str = ""  # empty: [server] hostname
    max_connections: int = 10  # parallel connections per destination
    max_total_connections: int = 100
    recipient_limit: int = 50  # recipients per SMTP transaction
    bounce_size_limit: int = 50000  # larger originals are returned as headers only
    status_retention: int = 30 * 86400  # finished entries kept for status display
    # Seconds a node's claim on queued recipients lasts without renewal (renewed
    # every third while held): how long a crashed node's work waits for another.
    claim_lease: int = 600


@dataclass(frozen=True)
class SearchConfig:
    # Decoded text kept per message for SEARCH BODY/TEXT, in characters (the
    # trigram index grows with it). Text past the cap is not found; 0 keeps
    # only the first 16,384 characters, unindexed (the old excerpt).
    max_text_chars: int = 1 << 20


@dataclass(frozen=True)
class DirectoryConfig:
    # The enterprise directory and its admin API (exmaild/directory, docs/admin-api.md).
    member_limit: int = 200  # members per enterprise unless the enterprise sets its own
    max_department_depth: int = 15
    max_aliases: int = 5  # email aliases per member
    recycle_days: int = 30  # a deleted member's days in the recycle bin before the purge
    shared_recycle_days: int = 60  # a recalled business mailbox's days there (§4.4.2.3)
    shared_quota_bytes: int = 1 << 30  # a new business mailbox's quota; 0: unlimited
    member_quota_bytes: int = 1 << 30  # a new normal member's quota; 0: unlimited
    vip_quota_bytes: int = 0  # a new VIP member's quota; 0: unlimited
    session_ttl: int = 3600  # seconds an admin login's bearer token lives
    # Seconds between a daemon's checks of the operation log for directory
    # changes (made by exmailctl or another node): its lookup caches are then dropped.
    change_poll_interval: float = 1.0
    api_max_body: int = 1024 * 1024  # bytes of a JSON request body
    api_page_limit: int = 500  # largest `limit` of a list request
    import_max_rows: int = 10000  # rows of one CSV import


@dataclass(frozen=True)
class ExmailAPIConfig:
    # Exmail's open API under /cgi-bin/ (exmaild/exmail_api, docs/exmail-api.md).
    token_ttl: int = 7200  # seconds an access_token from gettoken lives
    # Time zone of mail/newcount's begin_date and end_date.
    timezone: str = "Asia/Shanghai"


@dataclass(frozen=True)
class MailAuthConfig:
    """Checks of mail arriving on the MX (exmaild/mailauth/inbound.py). DNS is
    [queue] dns_servers and dns_timeout."""

    # SPF, DKIM, DMARC and iprev on the MX listener, with the policy below.
    enabled: bool = False
    dmarc_reject_action: str = "reject"  # reject (550 5.7.1) | junk
    dmarc_quarantine_action: str = "junk"  # junk | inbox
    spf_fail_action: str = "junk"  # SPF -all failure without a DMARC pass: junk | reject | inbox
    impersonation_action: str = "junk"  # a member's display name from outside: junk | mark
    # Addresses or networks of the enterprise's own relays, which may send as
    # its domains without SPF or DKIM (the fake-boss rule). Loopback is not implied.
    trusted_relays: tuple[str, ...] = ()
    # Forwarders (ARC-Seal d= domains) whose passing ARC chain overrides a
    # DMARC failure (mailing lists, forwarding services the enterprise uses).
    arc_trusted_sealers: tuple[str, ...] = ()
    check_timeout: float = 20.0  # seconds one check (all its DNS queries) may take
    dns_threads: int = 4


@dataclass(frozen=True)
class SieveConfig:
    # Run members' active Sieve scripts at delivery (exmaild/sieve/, docs/sieve.md).
    enabled: bool = True
    max_script_size: int = 64 * 1024  # octets of one script
    max_scripts: int = 20  # scripts per account
    max_actions: int = 32  # actions one evaluation may take
    max_redirects: int = 4  # redirects per message and recipient
    max_steps: int = 100_000  # commands, tests and comparisons per evaluation
    max_cpu_ms: int = 200  # wall-clock budget of one evaluation
    # Vacation :days may not go below this (RFC 5230 §4.1 suggests 1 day).
    vacation_min_days: int = 1
    # Key of the SRS addresses on redirected mail; "": a random key kept in
    # <data>/srs.key. Nodes sharing a database need the same key.
    srs_secret: str = ""


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    blobs: BlobsConfig = field(default_factory=BlobsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    mailauth: MailAuthConfig = field(default_factory=MailAuthConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    exmail_api: ExmailAPIConfig = field(default_factory=ExmailAPIConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    # Directory the config file lives in; relative paths resolve against it.
    base_dir: str = field(default=".", metadata={"internal": True})
    # The file loaded ("": the embedded defaults), for logs and `db status`.
    source: str = field(default="", metadata={"internal": True})

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.paths.data)

    def resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'exmaild.sqlite'}"

    def listen_address(self, service: str) -> tuple[str, int] | None:
        """(host, port) for a service, or None when it is switched off."""
        return parse_listen(getattr(self.listen, service))


def parse_listen(value: str) -> tuple[str, int] | None:
    value = value.strip()
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "0.0.0.0"
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} out of range")
    return host, p


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(value: Any, typ: Any, path: str, errors: list[str]) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        # A bare port number is fine where a "host:port" string is expected.
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and path.startswith("listen."):
            return str(value)
    elif typing.get_origin(typ) in (list, tuple):
        if isinstance(value, list):
            return tuple(value)
    errors.append(f"{path}: expected {_type_name(typ)}, got {type(value).__name__} {value!r}")
    return None


def _build(cls: type, table: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")
    }
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        f = fields.get(key)
        if f is None:
            errors.append(f"{path}: unknown key")
            continue
        typ = hints[f.name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                errors.append(f"{path}: expected a table")
                continue
            kwargs[key] = _build(typ, value, f"{path}.", errors)
        elif isinstance(typ, types.UnionType):
            kwargs[key] = value
        else:
            coerced = _coerce(value, typ, path, errors)
            if coerced is not None:
                kwargs[key] = coerced
    return cls(**kwargs)


def _validate(cfg: Config, errors: list[str]) -> None:
    for svc in DEFAULT_PORTS:
        try:
            cfg.listen_address(svc)
        except ValueError as e:
            errors.append(f"listen.{svc}: {getattr(cfg.listen, svc)!r} is not host:port ({e})")
    if cfg.database.url and not cfg.database.url.startswith(("sqlite", "postgresql")):
        errors.append(f"database.url: unsupported database {cfg.database.url!r}")
    if cfg.database.pool_size < 1:
        errors.append("database.pool_size: must be at least 1")
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        errors.append("tls: set both cert and key, or neither (self-signed)")
    a = cfg.auth
    if a.argon2_time_cost < 1 or a.argon2_parallelism < 1:
        errors.append("auth: argon2_time_cost and argon2_parallelism must be 1 or more")
    if a.argon2_memory_kib < 8 * max(a.argon2_parallelism, 1):
        errors.append("auth.argon2_memory_kib: must be at least 8 KiB per lane")
    if cfg.tls.min_version not in ("1.2", "1.3"):
        errors.append(f"tls.min_version: {cfg.tls.min_version!r} is not 1.2 or 1.3")
    if cfg.tls.session_timeout < 1:
        errors.append("tls.session_timeout: must be 1 or more (seconds)")
    if cfg.log.level not in ("debug", "info", "warn", "error"):
        errors.append(f"log.level: {cfg.log.level!r} is not debug, info, warn or error")
    positive = ("limits.message_size", "limits.line_length", "limits.recipients",
                "limits.smtp_errors", "limits.imap_autologout", "limits.imap_nesting_depth",
                "limits.pop3_idle_timeout", "limits.smtp_idle_timeout", "smtp.max_auth_failures",
                "auth.threads", "database.maintenance_batch",
                "limits.imap_subscriptions", "limits.preauth_timeout", "limits.output_buffer",
                "limits.listen_backlog",
                "limits.input_buffer", "directory.member_limit",
                "directory.max_department_depth", "directory.session_ttl",
                "directory.change_poll_interval", "directory.api_max_body",
                "directory.api_page_limit", "directory.recycle_days",
                "directory.shared_recycle_days",
                "directory.import_max_rows", "auth.throttle_account_failures",
                "auth.throttle_ip_failures", "auth.throttle_window", "auth.login_log_days",
                "log.mail_retention_days",
                "sieve.max_script_size", "sieve.max_scripts", "sieve.max_actions",
                "sieve.max_steps", "sieve.max_cpu_ms")
    not_negative = ("limits.imap_literal_size", "limits.pop3_login_delay",
                    "smtp.lookup_cache_ttl", "database.sqlite_mmap_size",
                    "auth.cache_ttl", "limits.spool_threshold", "limits.inflight_memory",
                    "limits.spool_disk", "search.max_text_chars", "limits.max_connections",
                    "limits.max_connections_per_listener", "limits.max_connections_per_ip",
                    "limits.max_preauth_connections", "directory.max_aliases",
                    "directory.shared_quota_bytes", "directory.member_quota_bytes",
                    "directory.vip_quota_bytes", "auth.throttle_delay",
                    "auth.throttle_max_delay", "sieve.max_redirects",
                    "sieve.vacation_min_days")
    for path in positive + not_negative:
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key)
        if path in positive and value <= 0:
            errors.append(f"{path}: must be positive")
        elif value < 0:
            errors.append(f"{path}: must not be negative")
    if cfg.exmail_api.token_ttl <= 0:
        errors.append("exmail_api.token_ttl: must be positive")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(cfg.exmail_api.timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        errors.append(f"exmail_api.timezone: unknown time zone {cfg.exmail_api.timezone!r}")
    if cfg.limits.line_length < 1000:
        errors.append("limits.line_length: must be at least 1000 (RFC 5321 §4.5.3.1.6)")
    if cfg.limits.imap_line_length < 1000:
        errors.append("limits.imap_line_length: must be at least 1000")
    if not 0 < cfg.blobs.compact_ratio < 1:
        errors.append("blobs.compact_ratio: must be between 0 and 1")
    if cfg.blobs.segment_lease < 10:
        errors.append("blobs.segment_lease: must be at least 10 seconds")
    if cfg.blobs.max_open_segments < 1:
        errors.append("blobs.max_open_segments: must be positive")
    if cfg.blobs.backend not in ("segments", "postgresql"):
        errors.append(f"blobs.backend: must be \"segments\" or \"postgresql\", "
                      f"not {cfg.blobs.backend!r}")
    elif cfg.blobs.backend == "postgresql" and not cfg.database_url.startswith("postgresql"):
        errors.append("blobs.backend: \"postgresql\" keeps message contents in the database "
                      "and needs [database] url to be a PostgreSQL URL "
                      "(postgresql+psycopg://...); with SQLite use \"segments\"")
    _validate_queue(cfg.queue, errors)
    _validate_mailauth(cfg.mailauth, errors)
    validate_spam(cfg.spam, errors)
    for key, nets in (("auth.throttle_exempt", cfg.auth.throttle_exempt),
                      ("proxy.trusted_networks", cfg.proxy.trusted_networks)):
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                errors.append(f"{key}: {net!r} is not an address or network")
    for name in cfg.proxy.listeners:
        if name not in ListenConfig.__dataclass_fields__ or name == "admin":
            errors.append(f"proxy.listeners: {name!r} is not a mail listener")
    if cfg.queue.claim_lease < 5:
        errors.append("queue.claim_lease: must be at least 5 seconds")
    if cfg.server.lock_lease < 5:
        errors.append("server.lock_lease: must be at least 5 seconds")
    if not 1 <= cfg.server.workers <= MAX_WORKERS:
        errors.append(f"server.workers: must be between 1 and {MAX_WORKERS}")
    if cfg.proxy.timeout <= 0:
        errors.append("proxy.timeout: must be positive")


def _validate_mailauth(a: MailAuthConfig, errors: list[str]) -> None:
    import ipaddress

    for name, allowed in (("dmarc_reject_action", ("reject", "junk")),
                          ("dmarc_quarantine_action", ("junk", "inbox")),
                          ("spf_fail_action", ("junk", "reject", "inbox")),
                          ("impersonation_action", ("junk", "mark"))):
        if getattr(a, name) not in allowed:
            errors.append(f"mailauth.{name}: {getattr(a, name)!r} is not "
                          + " or ".join(allowed))
    for net in a.trusted_relays:
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            errors.append(f"mailauth.trusted_relays: {net!r} is not an address or network")
    if a.check_timeout <= 0:
        errors.append("mailauth.check_timeout: must be positive")
    if a.dns_threads < 1:
        errors.append("mailauth.dns_threads: must be positive")


def _validate_queue(q: QueueConfig, errors: list[str]) -> None:
    if not q.retry_schedule or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in q.retry_schedule
    ):
        errors.append("queue.retry_schedule: must be a non-empty list of positive seconds")
    for name in ("lifetime", "bounce_lifetime", "max_connections", "max_total_connections",
                 "recipient_limit", "status_retention"):
        if getattr(q, name) < 1:
            errors.append(f"queue.{name}: must be positive")
    for name in ("delay_warning", "bounce_size_limit"):
        if getattr(q, name) < 0:
            errors.append(f"queue.{name}: must not be negative")
    for name in ("scan_interval", "connect_timeout", "command_timeout", "dns_timeout"):
        if getattr(q, name) <= 0:
            errors.append(f"queue.{name}: must be positive")
    for name in ("remote_port", "mta_sts_port"):
        if not 0 < getattr(q, name) < 65536:
            errors.append(f"queue.{name}: must be a port number")
    if q.relayhost_tls not in ("none", "may", "starttls", "tls"):
        errors.append(f"queue.relayhost_tls: {q.relayhost_tls!r} is not none, may, starttls or tls")
    if q.dane and not q.dns_trust_ad:
        errors.append("queue.dane: needs dns_trust_ad = true (a DNSSEC-validating resolver)")
    if bool(q.relayhost_user) != bool(q.relayhost_password):
        errors.append("queue: set both relayhost_user and relayhost_password, or neither")
    for name, value in [("relayhost", q.relayhost)] + [
        ("dns_servers", v) for v in q.dns_servers
    ]:
        if name == "relayhost" and not value:
            continue
        try:
            parse_hostport(str(value), 25 if name == "relayhost" else 53)
        except ValueError as e:
            errors.append(f"queue.{name}: {value!r}: {e}")


def load_config(path: str | None) -> Config:
    """Load `path` (None: the embedded default) or raise ConfigError listing every problem."""
    errors: list[str] = []
    table: dict[str, Any] = {}
    base_dir = "."
    if path is not None:
        p = Path(path)
        try:
            table = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"{path}: invalid TOML: {e}"]) from e
        base_dir = str(p.resolve().parent)
    cfg = _build(Config, table, "", errors)
    cfg = dataclasses.replace(
        cfg, base_dir=base_dir, source=str(Path(path).resolve()) if path is not None else ""
    )
    _validate(cfg, errors)
    if errors:
        raise ConfigError(errors)
    return cfg

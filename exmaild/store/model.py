"""The one schema. Alembic revisions in migrations/ must produce exactly this.

Parsed message data (envelope, bodystructure, decoded headers, search text)
belongs to the *content*, not to a mailbox entry: a mail to 10,000 members is
one blob and one `contents` row, referenced by 10,000 `messages` rows.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# Timestamps are integer Unix seconds: cheap, portable, and what IMAP/POP need.
enterprises = sa.Table(
    "enterprises",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    # NULL: the [directory] member_limit default.
    sa.Column("member_limit", sa.Integer, nullable=True),
    # VIP seats (manual §4.4.2.1); NULL: no limit.
    sa.Column("vip_seats", sa.Integer, nullable=True),
    # Enterprise settings (display-name policy, welcome letter); NULL: defaults.
    sa.Column("settings", sa.JSON, nullable=True),
)

domains = sa.Table(
    "domains",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"), nullable=False),
    sa.Column("name", sa.String(253), nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.false()),
    # The ownership-token TXT value "check resolution" asks for (made at the first check).
    sa.Column("verify_token", sa.String(64), nullable=True),
)

# Room for the directory issue: departments nest through parent_id.
departments = sa.Table(
    "departments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"), nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("departments.id"), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    # Order among siblings (manual §4.3.1: departments are ordered).
    sa.Column("position", sa.Integer, nullable=False, server_default="0"),
    sa.Index(None, "enterprise_id", "parent_id"),
)

# One row per addressable principal. `kind` is 'member' now; 'group' and
# 'shared' (business mailbox) use the same row so lookups stay one query.
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # NULL only for an account in the recycle bin whose domain was removed:
    # then orphan_enterprise_id keeps its enterprise (directory/domain_removal.py).
    sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=True),
    sa.Column("address", sa.String(320), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="member"),
    sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("vip", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("department_id", sa.Integer, sa.ForeignKey("departments.id"), nullable=True),
    sa.Column("quota_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("used_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    # Client settings of manual §6.2.2, as a JSON object; see store/accounts.py.
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    # The lowest UIDVALIDITY not yet given to one of the account's mailboxes:
    # values never repeat for the account's lifetime (RFC 3501 §2.3.1.1), even
    # after DELETE + CREATE in the same second. See store/mailboxes.py.
    sa.Column("next_uidvalidity", sa.BigInteger, nullable=False, server_default="0"),
    # Member profile (manual §4.3): see exmaild/directory/.
    sa.Column("nickname", sa.String(200), nullable=False, server_default=""),
    sa.Column("phone", sa.String(40), nullable=False, server_default=""),
    sa.Column("title", sa.String(200), nullable=False, server_default=""),
    sa.Column("gender", sa.String(8), nullable=False, server_default=""),
    sa.Column("external_id", sa.String(200), nullable=True),
    # Set when the account went to the recycle bin: it neither logs in nor receives.
    sa.Column("deleted_at", sa.BigInteger, nullable=True),
    # The address prefix may change once (manual §4.3); the old one stays an alias.
    sa.Column("renamed", sa.Boolean, nullable=False, server_default=sa.false()),
    # Set by an admin reset: protocol logins are refused until the member sets
    # a new password through /api/v1/me/password.
    sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("orphan_enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"),
              nullable=True),
    sa.Index(None, "domain_id"),
)

# A member's departments (several allowed, manual §4.3.2).
account_departments = sa.Table(
    "account_departments",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "department_id", sa.Integer, sa.ForeignKey("departments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Index(None, "department_id"),
)

# Mail groups (manual §4.4.2.2): an account of kind "group" whose mail is
# expanded at delivery. `allow`: who may send to it (anyone | enterprise |
# members | list, the list in `allow_list`).
mail_groups = sa.Table(
    "mail_groups",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("allow", sa.String(16), nullable=False, server_default="anyone"),
    sa.Column("allow_list", sa.JSON, nullable=False),
    # Set for a department's own group (manual §4.4.2.2 "sync a department as a
    # group"): its members follow the department, its name the department's.
    sa.Column("department_id", sa.Integer, sa.ForeignKey("departments.id"), nullable=True,
              unique=True),
)

# One source of a group's recipients: kind is member | group (account_id),
# department (department_id, with or without sub-departments) or external (address).
group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "group_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    ),
    sa.Column(
        "department_id", sa.Integer, sa.ForeignKey("departments.id", ondelete="CASCADE"),
        nullable=True,
    ),
    sa.Column("with_children", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("address", sa.String(320), nullable=True),
    # kind "tag": every member with this tag (manual §4.3.4), as tagged at delivery.
    sa.Column("tag_id", sa.Integer, sa.ForeignKey("tags.id", ondelete="CASCADE"),
              nullable=True),
    sa.Index(None, "group_id"),
    sa.Index(None, "account_id"),
)

# Member tags (manual §4.3.4): labels an enterprise defines and puts on its
# members, to filter the member list and as a mail-group source.
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("enterprise_id", "name"),
)

member_tags = sa.Table(
    "member_tags",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "tag_id", sa.Integer, sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True,
    ),
    sa.Index(None, "tag_id"),
)

# Administrators (manual §4.5.3): role is creator | super | graded; a graded
# admin is limited to `functions` and to its departments (with their children).
admin_roles = sa.Table(
    "admin_roles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"), nullable=False),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("functions", sa.JSON, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("enterprise_id", "account_id"),
)

admin_role_departments = sa.Table(
    "admin_role_departments",
    metadata,
    sa.Column(
        "role_id", sa.Integer, sa.ForeignKey("admin_roles.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "department_id", sa.Integer, sa.ForeignKey("departments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

# Bearer tokens of the admin API, stored as SHA-256 of the token. kind:
# "session" (an admin's login, short-lived) or "api" (an integration's, long-lived).
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id"), nullable=False),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    ),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Every admin action (API or CLI), manual §4.4.8.3. No foreign keys: the log
# outlives what it names. Its highest id doubles as the directory's change
# counter that running daemons poll to drop cached lookups.
operation_log = sa.Table(
    "operation_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("enterprise_id", sa.Integer, nullable=True),
    sa.Column("actor", sa.String(320), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(400), nullable=False),
    sa.Column("before", sa.JSON, nullable=True),
    sa.Column("after", sa.JSON, nullable=True),
    sa.Column("ip", sa.String(64), nullable=False, server_default=""),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Index(None, "enterprise_id", "id"),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("address", sa.String(320), nullable=False, unique=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
)

mailboxes = sa.Table(
    "mailboxes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(1000), nullable=False),
    sa.Column("special_use", sa.String(16), nullable=True),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("uidnext", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("highestmodseq", sa.BigInteger, nullable=False, server_default="1"),
    # \Recent (RFC 3501): UIDs up to here were claimed by a session that
    # selected the mailbox; the next read-write SELECT claims the ones above.
    sa.Column("recent_uid", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("account_id", "name"),
    # Ids are never reused (SQLite would hand a deleted mailbox's id to the next
    # one): caches and notifications keyed by mailbox id, and OBJECTID's
    # MAILBOXID, must not mix them up. (Migration 0004 made it so.)
    sqlite_autoincrement=True,
)

# IMAP subscriptions are names, not mailboxes (RFC 3501 §6.3.6): one may name
# a mailbox that does not exist (any more), and CREATE / DELETE leave them be.
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(1000), nullable=False),
    sa.UniqueConstraint("account_id", "name"),
)

# Stored bodies: content-addressed by SHA-256 and reference-counted by the
# messages (and queue entries) that point at them.
contents = sa.Table(
    "contents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("segment", sa.String(64), nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("refcount", sa.Integer, nullable=False),
    sa.Column("header_len", sa.Integer, nullable=False),
    sa.Column("sent_date", sa.BigInteger, nullable=True),
    # The Date: header's day in its own zone, days since 1970-01-01 (SENTON).
    sa.Column("sent_day", sa.Integer, nullable=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("from_addr", sa.Text, nullable=False),
    sa.Column("to_addr", sa.Text, nullable=False),
    sa.Column("cc_addr", sa.Text, nullable=False),
    sa.Column("bcc_addr", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("attachment_names", sa.Text, nullable=False),
    # Large columns last: SQLite reads a row up to the column it needs, so the
    # short search fields must not sit behind these (SEARCH SUBJECT on 100k).
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("bodystructure", sa.LargeBinary, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("headers_text", sa.Text, nullable=False),
    sa.Column("excerpt", sa.Text, nullable=False),
    sa.Index(None, "refcount"),
)

# The whole decoded text of a content's text parts (mailstore/searchtext.py),
# for SEARCH BODY/TEXT: one row per content, so a message held in many
# mailboxes is indexed once, and deleted with its content. The substring
# index over it differs per database and is not described here (see
# store/textindex.py). A content without a row predates this table: search
# falls back to its `excerpt` until `exmailctl search reindex` has run.
content_text = sa.Table(
    "content_text",
    metadata,
    sa.Column(
        "content_id",
        sa.Integer,
        sa.ForeignKey("contents.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("text", sa.Text, nullable=False),
)

# Contents kept in the database ([blobs] backend = "postgresql", see
# store/dbblobs.py): the bytes of a content whose `segment` is "@db", cut
# into chunks of dbblobs.CHUNK bytes (all full but the last), written in the
# transaction that inserts the content row and deleted with it.
blob_chunks = sa.Table(
    "blob_chunks",
    metadata,
    sa.Column(
        "content_id",
        sa.Integer,
        sa.ForeignKey("contents.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# SORT / THREAD keys of a content (RFC 5256, RFC 5957), derived from its
# decoded fields (subject, envelope, headers_text) so the database orders by
# them: one row per content, made when a mailbox holding it is first sorted
# or threaded (store/sortkeys.py), deleted with the content. Strings are
# i;ascii-casemap folded (ASCII upper-cased) and compare as bytes.
content_sort = sa.Table(
    "content_sort",
    metadata,
    sa.Column(
        "content_id",
        sa.Integer,
        sa.ForeignKey("contents.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("base_subject", sa.Text, nullable=False),
    # The subject had a Re:/Fwd: leader or a (fwd) trailer (THREAD=REFERENCES).
    sa.Column("is_reply", sa.Boolean, nullable=False),
    sa.Column("from_key", sa.Text, nullable=False),
    sa.Column("to_key", sa.Text, nullable=False),
    sa.Column("cc_key", sa.Text, nullable=False),
    sa.Column("display_from", sa.Text, nullable=False),
    sa.Column("display_to", sa.Text, nullable=False),
    # "<id>" of Message-ID:, and the parent chain (References:, else the first
    # id of In-Reply-To:) as space-separated "<id>"s.
    sa.Column("msgid", sa.Text, nullable=False),
    sa.Column("refs", sa.Text, nullable=False),
)

# Per-segment accounting so compaction can pick segments without a scan.
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("dead_bytes", sa.BigInteger, nullable=False, server_default="0"),
    # Ownership (see store/blobs.py): the writing process claims the row before
    # it creates the file and renews `lease_until` (Unix seconds) while it
    # writes. Only a sealed segment is ever compacted or removed; one whose
    # lease ran out (its writer died) may be sealed by compaction.
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("lease_until", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sealed", sa.Boolean, nullable=False, server_default=sa.false()),
)

# A mailbox entry. System flags are a bit mask (see store/flags.py);
# keywords are a space-separated string because they are rare.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "mailbox_id", sa.Integer, sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("uid", sa.BigInteger, nullable=False),
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id"), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False, server_default="0"),
    sa.Column("keywords", sa.Text, nullable=False, server_default=""),
    sa.Column("internal_date", sa.BigInteger, nullable=False),
    # When the entry entered this mailbox (retention of Deleted/Junk counts from it).
    sa.Column("added", sa.BigInteger, nullable=False),
    sa.Column("modseq", sa.BigInteger, nullable=False),
    # Set when a POP client "deleted" it under the forbid-deletion setting (§6.2.2).
    sa.Column("pop_hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("mailbox_id", "uid"),
    sa.Index(None, "content_id"),
)

# UIDs expunged from a mailbox and the modseq of their expunge, as ranges
# (one row per contiguous run of one expunge), for QRESYNC's VANISHED (RFC
# 7162). Rows may also cover UIDs that still exist or never did (the upgrade
# writes 1:uidnext-1 at the then highest modseq, as nothing older is known):
# readers subtract the UIDs present.
expunged_uids = sa.Table(
    "expunged_uids",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "mailbox_id", sa.Integer, sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("first_uid", sa.BigInteger, nullable=False),
    sa.Column("last_uid", sa.BigInteger, nullable=False),
    sa.Column("modseq", sa.BigInteger, nullable=False),
    sa.Index(None, "mailbox_id", "modseq"),
)

# -- outbound queue and delivery status -------------------------------------
# One row per queued message; it holds one reference on its content. The
# stored body may start with a Return-Path header added for local delivery:
# `body_offset` bytes are skipped when relaying it.
queue_messages = sa.Table(
    "queue_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("queue_id", sa.String(32), nullable=False, unique=True),
    # NULL once the reference is released (the content may then be gone).
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id"), nullable=True),
    sa.Column("body_offset", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sender", sa.String(320), nullable=False),  # "" is the null sender
    sa.Column("envid", sa.String(100), nullable=True),
    sa.Column("ret", sa.String(4), nullable=True),  # FULL | HDRS | None
    sa.Column("account_id", sa.Integer, nullable=True),  # the submitting member, if any
    sa.Column("created", sa.BigInteger, nullable=False),
    # Header fields sent before the stored message: a Sieve redirect's
    # "Delivered-To: <member>" trace (RFC 9228), so the copy carries it.
    sa.Column("trace", sa.Text, nullable=True),
)

# Per recipient: the status a member sees for mail they sent (manual §5.5.4).
# status: queued | deferred | sent | delivered (local) | bounced | expired
queue_recipients = sa.Table(
    "queue_recipients",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "message_id",
        sa.Integer,
        sa.ForeignKey("queue_messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("domain", sa.String(253), nullable=False),
    sa.Column("orcpt", sa.String(500), nullable=True),
    sa.Column("notify", sa.String(40), nullable=True),  # NEVER | SUCCESS,FAILURE,DELAY | None
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt", sa.BigInteger, nullable=False),
    sa.Column("last_attempt", sa.BigInteger, nullable=True),
    sa.Column("last_reply", sa.Text, nullable=True),
    sa.Column("relay", sa.String(300), nullable=True),
    sa.Column("delay_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    # A node working on the recipient claims it until this time (Unix seconds).
    sa.Column("locked_until", sa.BigInteger, nullable=False, server_default="0"),
    # Which node holds the claim ([server] node_id): a restarted node frees its own.
    sa.Column("locked_by", sa.String(64), nullable=True),
    sa.Column("updated", sa.BigInteger, nullable=False),
    sa.Index(None, "status", "next_attempt"),
    sa.Index(None, "message_id"),
)

# DKIM signing keys (exmaild/mailauth/keys.py). `state`: "active" (signs),
# "standby" (published, not yet signing: the next key of a rotation) or
# "retired" (no longer signs; stays in DNS until mail signed with it is read).
# The private key is PEM (RSA) or the base64 Ed25519 seed, in the clear: the
# database's own access control protects it, as it protects password hashes.
dkim_keys = sa.Table(
    "dkim_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("domain", sa.String(253), nullable=False),
    sa.Column("selector", sa.String(63), nullable=False),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("private_key", sa.Text, nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("domain", "selector"),
)

# -- login security (exmaild/auth/) ------------------------------------------
# App passwords ("client-specific passwords", manual §5.6.8): argon2 like the
# account password. `account_id` is the account it logs in to; `created_by`
# the member who made it (itself, or a member assigned to the business mailbox
# `account_id`: the password dies with that assignment, see auth/apppass.py).
app_passwords = sa.Table(
    "app_passwords",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "created_by", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("last_used", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("account_id", "name"),
)

# Every login attempt on every face (manual §4.4.8, §5.5.7), kept
# [auth] login_log_days. No foreign keys: the log outlives what it names, and
# attempts on unknown names are logged too (account_id NULL).
login_log = sa.Table(
    "login_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("enterprise_id", sa.Integer, nullable=True),
    sa.Column("account_id", sa.Integer, nullable=True),
    sa.Column("account", sa.String(320), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(16), nullable=False),
    sa.Column("method", sa.String(120), nullable=False),
    sa.Column("client", sa.String(200), nullable=False, server_default=""),
    sa.Column("result", sa.String(8), nullable=False),  # ok | fail
    sa.Column("reason", sa.String(200), nullable=False, server_default=""),
    sa.Index(None, "created"),
    sa.Index(None, "account_id", "ip", "result"),
    sa.Index(None, "enterprise_id", "created"),
)

# The mail log (manual §4.4.8): one row per recipient of every message in
# and out, written in batches (mailstore/maillog.py), kept [log]
# mail_retention_days. No foreign keys: the log outlives what it names.
mail_log = sa.Table(
    "mail_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("enterprise_id", sa.Integer, nullable=True),
    sa.Column("direction", sa.String(3), nullable=False),  # in | out
    sa.Column("sender", sa.String(320), nullable=False),
    sa.Column("recipient", sa.String(320), nullable=False),  # the member (or remote) reached
    sa.Column("written_to", sa.String(320), nullable=False, server_default=""),  # alias/group
    sa.Column("subject", sa.String(200), nullable=False, server_default=""),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    # delivered | queued | deferred | bounced | refused | junk
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("queue_id", sa.String(32), nullable=False, server_default=""),
    sa.Column("client", sa.String(64), nullable=False, server_default=""),
    sa.Index(None, "created"),
    sa.Index(None, "enterprise_id", "created"),
    sa.Index(None, "queue_id"),
    # Vacation's "known senders": has the member sent mail to this address?
    sa.Index(None, "recipient", "sender"),
)

# Cluster-wide locks (store/leases.py): the POP3 maildrop lock, maintenance
# leadership. A row whose `expires` passed is free for the next taker.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Index(None, "holder"),
)

# Brute-force throttling state shared by every node: failures per key
# ("a:<account>|<ip>" or "i:<ip>") since `updated` - [auth] throttle_window.
auth_throttle = sa.Table(
    "auth_throttle",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)

# An enterprise's login rules (manual §4.4.5): forced secure login, allowed
# source networks with exempt members, protocol switches. See auth/rules.py.
login_policy = sa.Table(
    "login_policy",
    metadata,
    sa.Column(
        "enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
        primary_key=True, autoincrement=False,
    ),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)

# The second factor of the HTTP API logins (exmaild/auth/totp.py): an RFC 6238
# secret, enabled once a first code confirmed it; `last_step` refuses a
# replayed code; `recovery` holds SHA-256 digests of unused recovery codes.
totp_secrets = sa.Table(
    "totp_secrets",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True, autoincrement=False,
    ),
    sa.Column("secret", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_step", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("recovery", sa.JSON, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
)

# Exmail's open API under /cgi-bin/ (exmaild/exmail_api, docs/exmail-api.md):
# an enterprise's corp id, one secret per purpose (directory | logs | newmail
# | login) stored as SHA-256, and the access tokens gettoken hands out (in the
# database so every node accepts them). Expired tokens are kept a day so a
# caller hears "expired" (42001) rather than "invalid" (40014).
exmail_api_corps = sa.Table(
    "exmail_api_corps",
    metadata,
    sa.Column(
        "enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("corp_id", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
)

exmail_api_secrets = sa.Table(
    "exmail_api_secrets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("enterprise_id", "purpose"),
)

exmail_api_tokens = sa.Table(
    "exmail_api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "secret_id", sa.Integer, sa.ForeignKey("exmail_api_secrets.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Index(None, "secret_id"),
)

# Exmail profile fields the directory has no column for (user/create|update
# `tel`, the desk phone beside `mobile`).
exmail_api_profiles = sa.Table(
    "exmail_api_profiles",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tel", sa.String(40), nullable=False, server_default=""),
)

# Sieve scripts of an account (exmaild/sieve/, ManageSieve): at most one is
# active, the one run at delivery.
sieve_scripts = sa.Table(
    "sieve_scripts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("script", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("account_id", "name"),
)

# Vacation replies sent (RFC 5230 §4.2): one per (account, sender, handle)
# until `expires`.
vacation_replies = sa.Table(
    "vacation_replies",
    metadata,
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("sender", sa.String(320), primary_key=True),
    sa.Column("handle", sa.String(64), primary_key=True),
    sa.Column("expires", sa.BigInteger, nullable=False),
)

# A member's sender lists (manual §5.6.1): list "block" (action "junk" or
# "refuse") or "allow" (skips the Junk decision); pattern an address or a
# domain (which covers its subdomains).
member_filters = sa.Table(
    "member_filters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("list", sa.String(8), nullable=False),
    sa.Column("pattern", sa.String(320), nullable=False),
    sa.Column("action", sa.String(8), nullable=False, server_default="junk"),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("account_id", "list", "pattern"),
)

# An enterprise's inbound filters (manual §4.4.4), applied before members'
# lists and rules: kind "block"/"allow" (address or domain) or "subject"
# (a keyword); action "junk" or "refuse".
enterprise_filters = sa.Table(
    "enterprise_filters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("pattern", sa.String(320), nullable=False),
    sa.Column("action", sa.String(8), nullable=False, server_default="junk"),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("enterprise_id", "kind", "pattern"),
)

# A domain's catch-all mailbox (manual §4.4.4.3 邮件转移): mail to unknown
# addresses of the domain goes to this account's folder "邮件转移".
domain_catchall = sa.Table(
    "domain_catchall",
    metadata,
    sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
)

# Mail backup rules (manual §4.4.6.1): sources [{"member": id} |
# {"department": id} | {"all": true}], direction sent|received|both,
# keywords that must all be in subject or body; copies go to dest's folder.
backup_rules = sa.Table(
    "backup_rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("enterprise_id", sa.Integer, sa.ForeignKey("enterprises.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("sources", sa.JSON, nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("keywords", sa.JSON, nullable=False),
    sa.Column("dest_account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("folder", sa.String(1000), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
)

# Tables kept in modules of their own (model.py is long), registered on this metadata.
from exmaild.store.model_jobs import directory_jobs  # noqa: E402, F401
from exmaild.store.model_tls import mta_sts_policies, tls_report_counts  # noqa: E402, F401

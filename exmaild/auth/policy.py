"""The one place every login goes through: SMTP AUTH, IMAP LOGIN and
AUTHENTICATE, POP3 USER/PASS and AUTH, the admin and self-service API logins.

`LoginGate.login(name, secret, protocol=, ip=, client=)` returns a
`Decision`; each face only turns it into its protocol's answer. In order:

1. throttling (auth/throttle.py): past the limits, refused unchecked, except
   from an address where the account logged in successfully before;
2. the secret: the account password, or one of the account's app passwords
   (auth/apppass.py). Under secure login (the member's own switch, forced by
   the enterprise, or always for a business mailbox) only app passwords work
   on the mail protocols; the APIs take only the account password;
3. account state (disabled, must change password), the enterprise's
   allowed networks and the protocol switches (auth/rules.py).

Every attempt becomes one login_log row, and every refusal one log line
`login refused: ... rip=IP ...` that fail2ban can match
(docs/login-security.md). Nothing here is cached across logins but verified
passwords (checker.py, keyed by the stored hash): a rule, a revoked app
password or a new password applies to the next login on every node.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from twisted.internet import task
from twisted.logger import Logger

from exmaild.auth import apppass, loginlog, rules, second_factor, throttle
from exmaild.auth.checker import MustChangePassword, _dummy_hash
from exmaild.directory.shared import assigned_ids
from exmaild.store import model as m
from exmaild.store.errors import storage_full
from exmaild.store.records import Account

if TYPE_CHECKING:
    from exmaild.auth.checker import AccountAuthenticator
    from exmaild.config import AuthConfig

log = Logger(namespace="exmaild.auth")

MAIL_PROTOCOLS = ("smtp", "imap", "pop3", "sieve")
API_PROTOCOLS = ("api", "api-me")

# What a client may be told (only after the right secret, or about throttling).
SECURE_LOGIN_TEXT = ("secure login is on: the account password works only for the web API; "
                     "log in with an app password (create one at /api/v1/me/app-passwords)")
SECURE_FORCED_TEXT = ("your administrator requires secure login: create an app password "
                      "(POST /api/v1/me/app-passwords, or ask an administrator) and use it "
                      "in your mail client instead of the account password")
THROTTLED_TEXT = "too many failed logins: try again later"
ADMIN_TOTP_TEXT = ("your enterprise requires a second factor for administrators: log in at "
                   "POST /api/v1/me/login and enable it at /api/v1/me/totp first")


@dataclass(frozen=True)
class Decision:
    # ok | bad (wrong name or secret) | refused (right secret, a rule says no)
    # | throttled | must_change | unavailable (could not be checked: try later)
    kind: str
    reason: str  # for logs, never for the client unless `text`
    account: Account | None = None
    method: str = "password"
    text: str = ""  # what the client may be told
    code: str = ""  # refused: secure_login | ip | protocol | second_factor

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _norm_ip(ip: str) -> str:
    try:
        a = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64]
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return str(a)


class LoginGate:
    def __init__(self, store: Any, auth: AccountAuthenticator, cfg: AuthConfig) -> None:
        self.store = store
        self.pool = store.pool
        self.auth = auth
        self.cfg = cfg
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in cfg.throttle_exempt]

    def throttled_here(self, ip: str) -> bool:
        """Whether throttling applies to logins from this address."""
        if not self.cfg.throttle:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return True
        return not any(addr in net for net in self._exempt)

    async def login(self, name: str, secret: str, *, protocol: str, ip: str,
                    client: str = "", otp: str | None = None) -> Decision:
        """`otp`: the second factor (TOTP or recovery code) of an API login."""
        typed = name[:320]
        name = name.strip().lower()[:320]
        ip = _norm_ip(ip)
        try:
            d, ent, acct_id = await self._decide(name, secret, protocol, ip, otp)
        except Exception:
            log.failure("login of {user} from {rip} could not be checked", user=name, rip=ip)
            return Decision("unavailable", "store error")
        try:
            await self._record(d, name, ip, protocol, client, ent, acct_id)
        except Exception as e:
            if not storage_full(e):
                # Not recorded: refuse rather than let a login pass unlogged.
                log.failure("login of {user} from {rip} could not be recorded",
                            user=name, rip=ip)
                return Decision("unavailable", "login log not writable")
            # A full disk must not lock members out of the mail already
            # acknowledged: the attempt goes to the daemon's log instead.
            log.warn("login log full: not recorded: user={user} rip={rip} protocol={protocol} "
                     "result={result} reason={reason}", user=typed, rip=ip, protocol=protocol,
                     result="ok" if d.ok else "fail", reason=d.reason or "-")
        if not d.ok:
            wait = await self._penalty(name, ip) if d.kind == "bad" else 0.0
            # The one line per refusal fail2ban matches (docs/login-security.md).
            log.warn("login refused: user={user} rip={rip} protocol={protocol} "
                     "method={method} reason={reason} delay={delay}", user=typed, rip=ip,
                     protocol=protocol, method=d.method, reason=d.reason, delay=wait)
            if wait > 0:
                await task.deferLater(self.store.reactor, wait, lambda: None)
        return d

    async def _decide(self, name: str, secret: str, protocol: str, ip: str,
                      otp: str | None = None) -> tuple[Decision, int | None, int | None]:
        now = int(time.time())
        acct = await self.store.directory.get_account(name) if name else None
        ctx = await self.pool.do(lambda conn: self._context(conn, name, ip, acct, now))
        ent = ctx["enterprise_id"]
        aid = acct.id if acct is not None else None
        if ctx["blocked"] and not ctx["known"]:
            return Decision("throttled", "throttled: too many failures", acct,
                            text=THROTTLED_TEXT), ent, aid
        if acct is None or acct.kind not in ("member", "shared"):
            await self.auth.check_secret("dummy", _dummy_hash(), secret)
            return Decision("bad", "unknown user"), ent, aid
        api = protocol in API_PROTOCOLS
        r: rules.Rules = ctx["rules"]
        secure = acct.kind == "shared" or bool(acct.settings.get("secure_login")) \
            or r.secure_forced
        method = "password"
        candidates: list[tuple[Any, str, Any]] = []
        if (api or not secure) and acct.password_hash:
            candidates.append((acct.id, acct.password_hash, "password"))
        if not api:
            candidates += [(("app", a.id), a.password_hash, a) for a in ctx["apps"]]
        # Remembered secrets first: a cached app password costs no argon2 for
        # the account password it does not match.
        matched = next((what for key, h, what in candidates
                        if self.auth.remembered(key, h, secret)), None)
        if matched is None:
            for key, h, what in candidates:
                if await self.auth.check_secret(key, h, secret):
                    matched = what
                    break
        if matched is None:
            if (secure and not api and acct.password_hash
                    and await self.auth.check_secret(acct.id, acct.password_hash, secret)):
                # The right account password where only app passwords count: say why.
                text = SECURE_FORCED_TEXT if r.secure_forced and not ctx["apps"] \
                    else SECURE_LOGIN_TEXT
                return Decision("refused", "account password under secure login", acct,
                                text=text, code="secure_login"), ent, aid
            if ctx["blocked"]:
                return Decision("throttled", "throttled: too many failures", acct,
                                text=THROTTLED_TEXT), ent, aid
            return Decision("bad", "wrong password", acct), ent, aid
        if matched == "password":
            # A hash with older argon2 parameters is redone with the current ones.
            acct = await self.auth.upgrade(acct, secret)
        else:
            method = f"app:{matched.name}"
            if acct.kind == "shared" and not ctx["creators"].get(matched.created_by):
                return Decision("bad", f"app password {matched.name!r}: its creator is no "
                                "longer assigned to this mailbox", acct, method), ent, aid
        if not acct.enabled:
            # Told like a wrong password: the state of an account is not for strangers.
            return Decision("bad", "account disabled", acct, method), ent, aid
        if acct.must_change_password and protocol != "api-me":
            return Decision("must_change", "password must be changed", acct, method,
                            text=MustChangePassword.TEXT), ent, aid
        if not r.ip_allowed:
            return Decision("refused", f"login from {ip} not allowed by the enterprise", acct,
                            method, text="logins from this address are not allowed",
                            code="ip"), ent, aid
        off = self._switched_off(acct, r, protocol)
        if off:
            return Decision("refused", off, acct, method, text=off, code="protocol"), ent, aid
        if api:
            return await self._second_factor(acct, r, ctx, protocol, ip, otp), ent, aid
        return Decision("ok", "", acct, method), ent, aid

    async def _second_factor(self, acct: Account, r: rules.Rules, ctx: dict[str, Any],
                             protocol: str, ip: str, otp: str | None) -> Decision:
        if not ctx["totp"]:
            if protocol == "api" and r.admin_totp and ctx["admin"]:
                return Decision("refused", "administrator without a second factor", acct,
                                text=ADMIN_TOTP_TEXT, code="second_factor")
            return Decision("ok", "", acct)
        if not otp:
            return Decision("second_factor", "second factor missing", acct,
                            text="this account needs a second factor: send \"otp\" "
                                 "(the authenticator app's code or a recovery code)")
        now = int(time.time())
        used = await self.pool.transaction(
            lambda conn: second_factor.consume(conn, acct.id, otp, now, ip))
        if used is None:
            return Decision("bad", "wrong or reused second factor", acct, "password+otp")
        return Decision("ok", "", acct, f"password+{used}")

    @staticmethod
    def _switched_off(acct: Account, r: rules.Rules, protocol: str) -> str:
        imap = r.imap and bool(acct.setting("imap_enabled"))
        pop = r.pop and bool(acct.setting("pop_enabled"))
        if protocol == "imap" and not imap:
            return "IMAP is switched off for this account"
        if protocol == "pop3" and not pop:
            return "POP3 is switched off for this account"
        if protocol == "smtp" and not (imap or pop):
            return "SMTP is off: IMAP/SMTP and POP/SMTP are both switched off"
        return ""

    def _context(self, conn: sa.Connection, name: str, ip: str, acct: Account | None,
                 now: int) -> dict[str, Any]:
        cfg = self.cfg
        n_ai, n_ip = throttle.counts(conn, name, ip, now, cfg.throttle_window) \
            if self.throttled_here(ip) else (0, 0)
        blocked = n_ai >= cfg.throttle_account_failures or n_ip >= cfg.throttle_ip_failures
        out: dict[str, Any] = {"blocked": blocked, "known": False, "enterprise_id": None,
                               "apps": [], "creators": {}, "rules": None, "totp": False,
                               "admin": False}
        if acct is None:
            return out
        out["known"] = blocked and loginlog.known_address(conn, acct.id, ip)
        ent = conn.execute(sa.select(m.domains.c.enterprise_id).where(
            m.domains.c.id == acct.domain_id)).scalar()
        out["enterprise_id"] = ent
        out["rules"] = rules.for_account(conn, ent, acct.id, ip)
        out["apps"] = apppass.for_login(conn, acct.id)
        out["totp"] = second_factor.enabled(conn, acct.id)
        out["admin"] = conn.execute(sa.select(m.admin_roles.c.id).where(
            m.admin_roles.c.account_id == acct.id)).first() is not None
        if acct.kind == "shared" and out["apps"]:
            members = assigned_ids(conn, acct.id)
            out["creators"] = {a.created_by: a.created_by in members for a in out["apps"]}
        return out

    async def _record(self, d: Decision, name: str, ip: str, protocol: str, client: str,
                      ent: int | None, aid: int | None) -> None:
        now = int(time.time())
        cfg = self.cfg

        def thd(conn: sa.Connection) -> None:
            if d.kind == "bad" and self.throttled_here(ip):
                throttle.failed(conn, name, ip, now, cfg.throttle_window)
            elif d.ok:
                throttle.succeeded(conn, name, ip)
                if d.method.startswith("app:") and aid is not None:
                    conn.execute(m.app_passwords.update().where(
                        m.app_passwords.c.account_id == aid,
                        m.app_passwords.c.name == d.method[4:]).values(last_used=now))
            loginlog.record(conn, created=now, enterprise_id=ent, account_id=aid,
                            account=name, ip=ip, protocol=protocol, method=d.method,
                            client=client, result="ok" if d.ok else "fail",
                            reason=d.reason if not d.ok else "")

        await self.pool.transaction(thd)

    async def _penalty(self, name: str, ip: str) -> float:
        """How long to hold a failure's answer: doubling with the failures counted."""
        cfg = self.cfg
        if not self.throttled_here(ip) or cfg.throttle_delay <= 0:
            return 0.0
        now = int(time.time())
        n_ai, n_ip = await self.pool.do(
            lambda conn: throttle.counts(conn, name, ip, now, cfg.throttle_window))
        # The IP's count weighs less: one address may serve many honest users.
        return throttle.delay(max(n_ai, n_ip // 4), cfg.throttle_delay, cfg.throttle_max_delay)

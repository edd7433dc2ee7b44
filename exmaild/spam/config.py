"""The `[spam]` section: rspamd and the DNSBL zones (read by exmaild/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SpamConfig:
    # rspamd's normal worker (HTTP /checkv2); "" leaves rspamd out.
    url: str = ""
    # Seconds rspamd may take for one message before it is accepted unchecked.
    timeout: float = 10.0
    # Messages larger than this (octets) are not sent to rspamd.
    max_size: int = 10 * 1024 * 1024
    # Train rspamd (learn_spam / learn_ham) when members move mail into or out of Junk.
    learn: bool = False
    # rspamd's controller worker and its password (the `Password` header).
    controller_url: str = "http://127.0.0.1:11334"
    password: str = ""
    # DNS block lists asked about each client address (e.g. "zen.spamhaus.org").
    dnsbl_zones: tuple[str, ...] = ()
    dnsbl_action: str = "reject"  # reject (554 5.7.1 at RCPT) | junk

    @property
    def rspamd(self) -> bool:
        return bool(self.url)


def validate_spam(s: SpamConfig, errors: list[str]) -> None:
    for name in ("url", "controller_url"):
        value = getattr(s, name)
        if value and (urlsplit(value).scheme not in ("http", "https")
                      or not urlsplit(value).hostname):
            errors.append(f"spam.{name}: {value!r} is not an http:// URL")
    if s.timeout <= 0:
        errors.append("spam.timeout: must be positive")
    if s.max_size <= 0:
        errors.append("spam.max_size: must be positive")
    if s.dnsbl_action not in ("reject", "junk"):
        errors.append(f"spam.dnsbl_action: {s.dnsbl_action!r} is not reject or junk")
    for zone in s.dnsbl_zones:
        if not zone or " " in zone or zone.startswith("."):
            errors.append(f"spam.dnsbl_zones: {zone!r} is not a DNS zone")

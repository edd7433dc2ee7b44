"""The Authentication-Results field (RFC 8601), written with `authres`, and
the removal of forged ones.

A message may arrive with Authentication-Results fields claiming our
authserv-id (a forger hoping a client trusts them): RFC 8601 §5 says an MTA
must remove those before adding its own. Removal looks only at the field's
authserv-id (the first token, comments and CFWS skipped), so even a field
that does not otherwise parse is caught.
"""

from __future__ import annotations

import re

import authres
import authres.arc
import authres.dmarc

from exmaild.mailauth.checks import ARCResult, DKIMResult, IPRevResult, SPFResult
from exmaild.mailauth.dmarc import DMARCResult
from exmaild.mailauth.headers import drop_fields

FIELD = b"authentication-results"
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def authserv_id(raw_field: bytes) -> str:
    """The authserv-id of a raw `Authentication-Results:` field, lower case."""
    value = raw_field.split(b":", 1)[1] if b":" in raw_field else b""
    text = value.decode("utf-8", "replace")
    for _ in range(3):  # nested comments, a few levels deep
        text = _COMMENT.sub(" ", text)
    token = re.split(r"[;\s]", text.strip(), maxsplit=1)[0]
    return token.lower().rstrip(".")


def strip_forged(header: bytes, our_id: str, also: tuple[bytes, ...] = ()) -> tuple[bytes, int]:
    """The header section without A-R fields claiming `our_id` (and without the
    fields named in `also`, which only we may add); how many were removed."""
    ours = our_id.lower().rstrip(".")
    names = tuple(n.lower() for n in also)

    def unwanted(name: bytes, raw: bytes) -> bool:
        n = name.lower()
        return (n == FIELD and authserv_id(raw) == ours) or n in names

    return drop_fields(header, unwanted)


def _clean(text: str) -> str:
    # Comments from remote input (pyspf explanations): no parentheses or controls.
    return re.sub(r"[()\\\x00-\x1f\x7f]", " ", text)[:120].strip()


def build(our_id: str, *, spf: SPFResult | None, helo: SPFResult | None,
          dkims: list[DKIMResult], dmarc: DMARCResult | None,
          iprev: IPRevResult | None, arc: ARCResult | None = None) -> bytes:
    """The folded field, CRLF-terminated."""
    results: list[object] = []
    if iprev is not None:
        results.append(authres.IPRevAuthenticationResult(
            result=iprev.result, policy_iprev=iprev.ip,
            result_comment=_clean(iprev.name) or None))
    if spf is not None:
        results.append(authres.SPFAuthenticationResult(
            result=spf.result, smtp_mailfrom=spf.subject or None,
            result_comment=_clean(spf.comment) or None))
    if helo is not None and helo.subject:
        results.append(authres.SPFAuthenticationResult(
            result=helo.result, smtp_helo=helo.subject))
    for d in dkims:
        results.append(authres.DKIMAuthenticationResult(
            result=d.result, header_d=d.domain or None, header_s=d.selector or None,
            header_a=d.algorithm or None, result_comment=_clean(d.comment) or None))
    if not dkims:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    if arc is not None and arc.result != "none":
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result, header_as_d=arc.sealer or None, header_as_s=arc.selector or None,
            result_comment=_clean(f"{arc.instances} set(s)" + (f" {arc.comment}" if arc.comment
                                                                else ""))))
    if dmarc is not None:
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, header_from=dmarc.from_domain or None,
            policy=dmarc.published or None, result_comment=_clean(dmarc.comment) or None))
    parts = [str(r) for r in results]
    text = f"Authentication-Results: {our_id};" + ";".join(f"\r\n\t{p}" for p in parts)
    return text.encode("utf-8", "replace") + b"\r\n"

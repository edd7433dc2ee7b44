"""DANE for SMTP (RFC 7672): a server's certificate checked against the
DNSSEC-validated TLSA records of `_25._tcp.<mx host>`.

Only DANE-EE (3) and DANE-TA (2) records are usable for SMTP (§3.1.3: PKIX-TA
and PKIX-EE are treated as unusable). DANE-EE matches the server's own
certificate or key and ignores names and dates (§3.1.1); DANE-TA matches a
certificate of the chain the server presents, which must then issue the
server's certificate, valid for the MX host name (§3.2.2). TLSA records that
are all unusable still make TLS mandatory, without authentication (§2.2).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

EE, TA = 3, 2


def usable(records: list[Any]) -> list[Any]:
    return [r for r in records if r.usage in (EE, TA) and r.selector in (0, 1)
            and r.mtype in (0, 1, 2)]


def _data(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(record: Any, cert: x509.Certificate) -> bool:
    data = _data(cert, record.selector)
    if record.mtype == 1:
        data = hashlib.sha256(data).digest()
    elif record.mtype == 2:
        data = hashlib.sha512(data).digest()
    return bool(data == record.cert)


def _name_ok(cert: x509.Certificate, host: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME) if isinstance(a.value, str)]
    for n in names:
        n = n.lower().rstrip(".")
        if n == host or (n.startswith("*.") and host.partition(".")[2] == n[2:]):
            return True
    return False


def _issued_by(leaf: Any, anchor: Any, chain: list[Any]) -> bool:
    store = crypto.X509Store()
    store.add_cert(anchor)
    try:
        crypto.X509StoreContext(store, leaf, chain).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


def check(records: list[Any], chain: list[Any], host: str) -> str | None:
    """None when the presented chain (pyOpenSSL X509, server's first) satisfies
    one usable record, else why not."""
    good = usable(records)
    if not good:
        return None  # all unusable: encryption required, nothing to authenticate
    if not chain:
        return "no certificate presented"
    certs = [c.to_cryptography() for c in chain]
    leaf = certs[0]
    for r in good:
        if r.usage == EE and matches(r, leaf):
            return None
    for r in good:
        if r.usage != TA:
            continue
        for i, c in enumerate(certs):
            if matches(r, c) and _name_ok(leaf, host) and (
                    i == 0 or _issued_by(chain[0], chain[i], chain[1:i])):
                return None
    return f"no TLSA record matches the certificate of {host}"

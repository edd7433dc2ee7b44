"""TLS material: the configured certificate, or a self-signed one made on first start.

The certificate and key are handed to pyOpenSSL as `cryptography` objects
(its own X509/PKey are deprecated). The contexts, SNI and ALPN are in
`exmaild.tlscontext`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from exmaild.config import Config

log = Logger()


def _san_names(hostname: str) -> list[x509.GeneralName]:
    """The hostname, localhost and 127.0.0.1, each once."""
    names: list[x509.GeneralName] = []
    for n in (hostname, "localhost", "127.0.0.1"):
        try:
            gn: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(n))
        except ValueError:
            gn = x509.DNSName(n.lower())
        if gn not in names:
            names.append(gn)
    return names


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """A self-signed server (not CA) certificate for `hostname`, valid 825 days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_san_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _self_signed_fits(cert_path: Path, hostname: str) -> bool:
    """Whether our self-signed certificate was made for `hostname` and as a
    server certificate (older ones were CA certificates)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return not ca and set(san) == set(_san_names(hostname))


def cert_paths(cfg: Config) -> tuple[Path, Path]:
    if cfg.tls.cert:
        return cfg.resolve(cfg.tls.cert), cfg.resolve(cfg.tls.key)
    tls_dir = cfg.data_dir / "tls"
    cert, key = tls_dir / "selfsigned.crt", tls_dir / "selfsigned.key"
    hostname = cfg.server.hostname
    if not (cert.exists() and key.exists()):
        make_self_signed(cert, key, hostname)
        log.warn(
            "made a self-signed certificate {cert} for {hostname}; "
            "set [tls] cert and key for production",
            cert=str(cert),
            hostname=hostname,
        )
    elif not _self_signed_fits(cert, hostname):
        make_self_signed(cert, key, hostname)
        log.warn(
            "remade the self-signed certificate {cert} for {hostname} "
            "([server] hostname changed, or it was an old CA certificate)",
            cert=str(cert),
            hostname=hostname,
        )
    return cert, key


def load_files(cert_path: Path, key_path: Path) -> tuple[Any, list[x509.Certificate]]:
    """(private key, [leaf, chain...]) from PEM files (they may be one file)."""
    certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if key.public_key() != certs[0].public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return key, certs


def load_pair(cfg: Config) -> tuple[Any, list[x509.Certificate], x509.Certificate]:
    """(private key, [leaf, chain...], leaf) from the configured or self-signed files."""
    key, certs = load_files(*cert_paths(cfg))
    return key, certs, certs[0]


def names_host(cert: x509.Certificate, hostname: str) -> bool:
    """Whether the certificate's DNS names cover `hostname` (one-label wildcards too)."""
    host = hostname.lower().rstrip(".")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def check_names(cfg: Config, leaf: x509.Certificate) -> None:
    if cfg.tls.cert and not names_host(leaf, cfg.server.hostname):
        log.warn("the certificate {cert} is not for [server] hostname {hostname}: clients "
                 "that check it will refuse it", cert=cfg.tls.cert, hostname=cfg.server.hostname)

"""TLS material: the configured certificate, or a self-signed one made on first start."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from exmaild.config import Config

log = Logger()


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(hostname), x509.DNSName("localhost"),
           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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


def cert_paths(cfg: Config) -> tuple[Path, Path]:
    if cfg.tls.cert:
        return cfg.resolve(cfg.tls.cert), cfg.resolve(cfg.tls.key)
    tls_dir = cfg.data_dir / "tls"
    cert, key = tls_dir / "selfsigned.crt", tls_dir / "selfsigned.key"
    if not (cert.exists() and key.exists()):
        make_self_signed(cert, key, cfg.server.hostname)
        log.warn(
            "made a self-signed certificate {cert} for {hostname}; "
            "set [tls] cert and key for production",
            cert=str(cert),
            hostname=cfg.server.hostname,
        )
    return cert, key


def server_context(cfg: Config) -> ssl.CertificateOptions:
    """TLS 1.2 or newer, with the configured or self-signed certificate."""
    cert_path, key_path = cert_paths(cfg)
    pem = cert_path.read_bytes() + b"\n" + key_path.read_bytes()
    cert = ssl.PrivateCertificate.loadPEM(pem)
    chain = [
        ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)).original
        for c in x509.load_pem_x509_certificates(cert_path.read_bytes())[1:]
    ]
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )

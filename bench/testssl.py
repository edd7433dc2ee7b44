"""Run Debian's testssl.sh against a real exmaild on loopback and sum up its findings.

    python3 bench/testssl.py [--ports submissions,imaps,pop3s] [--starttls] [--keep DIR]

The daemon gets a certificate for `localhost` issued by a throw-away CA that
testssl is told to trust (--add-ca), so the report is about our TLS set-up,
not about a self-signed certificate. Prints each finding of severity MEDIUM
or higher and a count per severity per port; exits 1 when there is a HIGH or
CRITICAL one. Slow (a few minutes per port): not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, write_config  # noqa: E402

STARTTLS = {"submission": "smtp", "imap": "imap", "pop3": "pop3"}
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO", "OK", "WARN")


def _pem(obj: x509.Certificate) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def make_ca_and_leaf(out: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, leaf chain, leaf key) for `localhost`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exmaild bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=90))  # like an ACME CA's
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            # A public CA's certificate names where its revocation list is.
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://ca.example.test/bench.crl")],
                None, None, None)]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(_pem(ca))
    (out / "leaf.crt").write_bytes(_pem(leaf) + _pem(ca))
    (out / "leaf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out / "ca.crt", out / "leaf.crt", out / "leaf.key"


def run_testssl(port: int, ca: Path, json_out: Path, starttls: str | None) -> list[dict]:
    cmd = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
           "--ip", "127.0.0.1", "--add-ca", str(ca), "--jsonfile", str(json_out)]
    if starttls:
        cmd += ["--starttls", starttls]
    cmd.append(f"localhost:{port}")
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return json.loads(json_out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", default="submissions,imaps,pop3s")
    ap.add_argument("--starttls", action="store_true",
                    help="also submission, imap and pop3 through STARTTLS/STLS")
    ap.add_argument("--keep", help="keep the daemon's files and testssl's JSON here")
    args = ap.parse_args(argv)
    if shutil.which("testssl") is None:
        print("testssl not found: apt-get install testssl.sh", file=sys.stderr)
        return 2
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="exmaild-testssl-"))
    ca, chain, key = make_ca_and_leaf(tmp / "certs")
    config, ports = write_config(tmp, tls={"cert": str(chain), "key": str(key)})
    services = args.ports.split(",") + (list(STARTTLS) if args.starttls else [])
    daemon = Daemon(config, ports, tmp)
    daemon.start()
    worst = 0
    try:
        for svc in services:
            findings = run_testssl(ports[svc], ca, tmp / f"{svc}.json", STARTTLS.get(svc))
            counts = Counter(f.get("severity", "?") for f in findings)
            print(f"== {svc} (port {ports[svc]}): "
                  + ", ".join(f"{s} {counts[s]}" for s in SEVERITIES if counts[s]))
            for f in findings:
                if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM"):
                    print(f"   {f['severity']:8} {f['id']}: {f['finding']}")
                    worst = max(worst, int(f["severity"] in ("CRITICAL", "HIGH")))
            for f in findings:
                if f.get("id") in ("sessionresumption_ticket", "sessionresumption_ID",
                                   "cipherlist_AVERAGE", "cipherlist_STRONG", "LUCKY13",
                                   "TLS1_1", "TLS1_2", "TLS1_3"):
                    print(f"   {f['id']}: {f['finding']}")
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())

"""The server side of TLS: OpenSSL contexts, certificates per host name (SNI),
ALPN per listener, session resumption, reload on SIGHUP.

Each listener asks `ServerTLS.for_service(name)` for a connection creator
(Twisted's IOpenSSLServerConnectionCreator). Its context speaks TLS 1.2 or
newer with AEAD suites only and carries the default certificate; when the
client names a host (SNI) served by a certificate from `[tls] sni_dir`, the
connection switches to that certificate's context. Contexts are cached per
(certificate, ALPN name) and made afresh on reload: open connections keep the
context they started with, new ones get the new files.

ALPN (RFC 7301): a listener negotiates its own protocol name and answers any
other offer with the fatal `no_application_protocol` alert, so a man in the
middle cannot redirect, say, an HTTPS client to the IMAP port (ALPACA). A
client that offers no ALPN is served as before.

Sessions resume by session ID (TLS 1.2) and stateful tickets (TLS 1.3), both
in this process's cache: no long-lived ticket key that would undo forward
secrecy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from exmaild.config import Config
from exmaild.tls import check_names, load_files, load_pair

log = Logger()

# The ALPN name each listener negotiates (IANA's ALPN registry).
ALPN: dict[str, bytes] = {
    "smtp": b"smtp", "submission": b"smtp", "submissions": b"smtp",
    "imap": b"imap", "imaps": b"imap",
    "pop3": b"pop3", "pop3s": b"pop3",
    "managesieve": b"managesieve", "sieve": b"managesieve",
    "admin": b"http/1.1",
}

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class NoApplicationProtocol(SSL.Error):
    """Raised in the ALPN callback: OpenSSL then sends `no_application_protocol`
    (and Twisted, seeing an SSL.Error, closes the connection after it)."""


@dataclass(frozen=True)
class Pair:
    """A certificate chain (leaf first) with its key, and where it came from."""

    key: Any
    certs: tuple[x509.Certificate, ...]
    source: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    def dns_names(self) -> list[str]:
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]


def _dir_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """(certificate file, key file) pairs in an SNI directory, sorted by name."""
    found: list[tuple[Path, Path]] = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            chain, key = entry / "fullchain.pem", entry / "privkey.pem"
            if chain.is_file() and key.is_file():
                found.append((chain, key))
        elif entry.suffix == ".crt" and entry.with_suffix(".key").is_file():
            found.append((entry, entry.with_suffix(".key")))
        elif entry.suffix == ".pem" and entry.name not in ("fullchain.pem", "privkey.pem"):
            found.append((entry, entry))  # certificate and key in one file
    return found


def load_sni_dir(directory: Path) -> list[Pair]:
    """Every pair in the SNI directory; errors name the file."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    pairs = []
    for cert_path, key_path in _dir_pairs(directory):
        try:
            key, chain = load_files(cert_path, key_path)
        except OSError as e:
            raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{cert_path}: {e}") from None
        pairs.append(Pair(key, tuple(chain), str(cert_path)))
    return pairs


class Certificates:
    """The default pair and the SNI pairs, with the lookup by host name."""

    def __init__(self, default: Pair, extra: Sequence[Pair]) -> None:
        self.default = default
        self.pairs = [default, *extra]
        self.exact: dict[str, int] = {}
        self.wild: dict[str, int] = {}
        # Later pairs (the SNI directory) win over the default for a name.
        for i, pair in enumerate(self.pairs):
            for name in pair.dns_names():
                if name.startswith("*."):
                    self.wild[name[2:]] = i
                else:
                    self.exact[name] = i

    @classmethod
    def load(cls, cfg: Config) -> Certificates:
        key, certs, leaf = load_pair(cfg)
        check_names(cfg, leaf)
        default = Pair(key, tuple(certs), "default")
        extra = load_sni_dir(cfg.resolve(cfg.tls.sni_dir)) if cfg.tls.sni_dir else []
        return cls(default, extra)

    def index_for(self, servername: str | None) -> int:
        if not servername:
            return 0
        host = servername.lower().rstrip(".")
        if host in self.exact:
            return self.exact[host]
        return self.wild.get(host.partition(".")[2], 0)


class ServerTLS:
    """TLS for every listener; `reload()` rereads the files (SIGHUP)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.certs = Certificates.load(cfg)
        self._contexts: dict[tuple[int, bytes | None], SSL.Context] = {}

    def reload(self) -> x509.Certificate:
        """Read the certificate files again; new connections get them, open
        ones keep theirs. Raises (keeping the old ones) when one cannot be read."""
        self.certs = Certificates.load(self.cfg)
        self._contexts = {}
        return self.certs.default.leaf

    def summary(self) -> str:
        leaf = self.certs.default.leaf
        text = f"{leaf.subject.rfc4514_string()}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}"
        if len(self.certs.pairs) > 1:
            text += f"; {len(self.certs.pairs) - 1} more for SNI"
        return text

    def for_service(self, service: str) -> ListenerTLS:
        """The connection creator for a listener (ALPN by its service name)."""
        return ListenerTLS(self, ALPN.get(service))

    def context(self, index: int, alpn: bytes | None) -> SSL.Context:
        ctx = self._contexts.get((index, alpn))
        if ctx is None:
            ctx = self._contexts[(index, alpn)] = self._make(self.certs, index, alpn)
        return ctx

    def _make(self, certs: Certificates, index: int, alpn: bytes | None) -> SSL.Context:
        tls = self.cfg.tls
        pair = certs.pairs[index]
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_VERSIONS[tls.min_version])
        # No TLS compression (CRIME), no renegotiation (a client-driven CPU
        # sink), our cipher order; stateful tickets only (see the module doc).
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle IMAP connections hold no buffers
        ctx.set_cipher_list(tls.ciphers.encode("ascii"))
        ctx.use_certificate(pair.leaf)
        ctx.use_privatekey(pair.key)
        for extra in pair.certs[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.check_privatekey()
        # The same session-ID context for every certificate of one listener
        # kind, so a session survives the SNI switch of contexts.
        ctx.set_session_id(b"exmaild-" + (alpn or b"none"))
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(tls.session_timeout)
        ctx.set_alpn_select_callback(_alpn_selector(alpn))
        if index == 0 and len(certs.pairs) > 1:
            ctx.set_tlsext_servername_callback(self._sni_switch(certs, alpn))
        return ctx

    def _sni_switch(self, certs: Certificates, alpn: bytes | None) -> Any:
        def switch(conn: SSL.Connection) -> None:
            raw = conn.get_servername()
            name = raw.decode("ascii", "replace") if raw else None
            index = certs.index_for(name)
            # `certs` is this context's generation: after a reload the
            # contexts are new, and so is this callback.
            if index != 0 and certs is self.certs:
                conn.set_context(self.context(index, alpn))

        return switch


def _alpn_selector(alpn: bytes | None) -> Any:
    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        if alpn is not None and alpn in offered:
            return alpn
        names = ", ".join(p.decode("ascii", "replace") for p in offered)[:200]
        log.info("refused TLS from {ip}: it offered ALPN {offered}, this listener speaks "
                 "{alpn} (no_application_protocol)", ip=_peer(conn), offered=names,
                 alpn=alpn.decode() if alpn else "no ALPN protocol")
        # Shaped like OpenSSL's error queue, which Twisted's TLS layer reads.
        raise NoApplicationProtocol([("SSL routines", "", "no application protocol")])

    return select


def _peer(conn: SSL.Connection) -> str:
    try:
        return str(conn.get_app_data().transport.getPeer().host)
    except AttributeError:
        return "?"


@implementer(IOpenSSLServerConnectionCreator)
class ListenerTLS:
    """One listener's connection creator: for TLSMemoryBIOFactory and startTLS."""

    def __init__(self, server: ServerTLS, alpn: bytes | None) -> None:
        self.server = server
        self.alpn = alpn

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.server.context(0, self.alpn), None)


def server_context(cfg: Config) -> ServerTLS:
    return ServerTLS(cfg)

"""Mail client autoconfiguration, served on its own listener ([listen] autoconfig).

What each client asks for, built from [server] hostname and the listeners
actually configured (a switched-off listener is not offered):

- Thunderbird (and clients using its format, e.g. K-9, FairEmail):
  GET /.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=ADDR
  GET /mail/config-v1.1.xml?emailaddress=ADDR
- Outlook: POST /autodiscover/autodiscover.xml (POX, "outlook" response schema)
- iPhone, iPad, macOS Mail: GET /mobileconfig?email=ADDR (an unsigned profile)

Only TLS is offered: implicit TLS first (993, 995, 465), STARTTLS after.
The user name is always the full address (what the daemon's AUTH expects).
"""

from __future__ import annotations

import plistlib
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree as ET

from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild.app import App
from exmaild.config import Config

log = Logger()

MAX_BODY = 16 * 1024  # an Autodiscover request is a few hundred bytes
_ADDRESS = re.compile(r"[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

# listener -> (protocol, socket type as Thunderbird names it)
_INCOMING = (("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"),
             ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"))
_OUTGOING = (("submissions", "smtp", "SSL"), ("submission", "smtp", "STARTTLS"))


@dataclass(frozen=True)
class Server:
    protocol: str  # imap | pop3 | smtp
    port: int
    socket_type: str  # SSL (implicit TLS) | STARTTLS

    @property
    def implicit_tls(self) -> bool:
        return self.socket_type == "SSL"


def servers(cfg: Config) -> tuple[list[Server], list[Server]]:
    """(incoming, outgoing) servers in order of preference, from [listen]."""
    def pick(table: tuple[tuple[str, str, str], ...]) -> list[Server]:
        out = []
        for svc, proto, sock in table:
            addr = cfg.listen_address(svc)
            if addr is not None:
                out.append(Server(proto, addr[1], sock))
        return out

    return pick(_INCOMING), pick(_OUTGOING)


def valid_address(text: str | None) -> str | None:
    if not text:
        return None
    text = text.strip()
    return text if len(text) <= 320 and _ADDRESS.fullmatch(text) else None


def _domain(cfg: Config, address: str | None, host_header: str | None) -> str:
    if address:
        return address.rpartition("@")[2].lower()
    host = (host_header or "").split(":")[0].lower()
    for prefix in ("autoconfig.", "autodiscover."):
        if host.startswith(prefix):
            return host[len(prefix):]
    name = cfg.server.hostname.lower()
    return name.partition(".")[2] or name


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = str(text)
    return el


def thunderbird(cfg: Config, address: str | None, domain: str) -> bytes:
    """Thunderbird's clientConfig 1.1 document."""
    incoming, outgoing = servers(cfg)
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", f"{domain} mail")
    _sub(provider, "displayShortName", domain)
    for tag, kind, group in (("incomingServer", None, incoming),
                             ("outgoingServer", "smtp", outgoing)):
        for s in group:
            el = _sub(provider, tag, type=kind or s.protocol)
            _sub(el, "hostname", cfg.server.hostname)
            _sub(el, "port", s.port)
            _sub(el, "socketType", s.socket_type)
            _sub(el, "authentication", "password-cleartext")  # inside TLS only
            _sub(el, "username", address or "%EMAILADDRESS%")
    return _xml(root)


_AD_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_AD_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_AD_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"


def autodiscover(cfg: Config, address: str) -> bytes:
    """Outlook's POX Autodiscover response for `address` (IMAP/POP3/SMTP settings)."""
    incoming, outgoing = servers(cfg)
    root = ET.Element("Autodiscover", xmlns=_AD_RESPONSE)
    response = _sub(root, "Response", xmlns=_AD_OUTLOOK)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for s in incoming + outgoing:
        p = _sub(account, "Protocol")
        _sub(p, "Type", s.protocol.upper())
        _sub(p, "Server", cfg.server.hostname)
        _sub(p, "Port", s.port)
        _sub(p, "DomainRequired", "off")
        _sub(p, "LoginName", address)
        _sub(p, "SPA", "off")
        _sub(p, "SSL", "on")
        # Encryption wins over SSL where Outlook knows it: TLS means STARTTLS.
        _sub(p, "Encryption", "SSL" if s.implicit_tls else "TLS")
        _sub(p, "AuthRequired", "on")
        if s.protocol == "smtp":
            _sub(p, "UsePOPAuth", "off")
            _sub(p, "SMTPLast", "off")
    return _xml(root)


def request_address(body: bytes) -> str | None:
    """The EMailAddress of an Autodiscover request, or None."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        return None  # no DTDs, no entities: nothing to expand
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rpartition("}")[2] == "EMailAddress":
            return valid_address(el.text)
    return None


def mobileconfig(cfg: Config, address: str) -> bytes:
    """An Apple configuration profile with one Mail payload (unsigned)."""
    incoming, outgoing = servers(cfg)
    # Apple Mail has no POP3-vs-IMAP preference list: take the first offered.
    inc = incoming[0] if incoming else None
    out = outgoing[0] if outgoing else None
    ident = ".".join(reversed(cfg.server.hostname.split("."))) + ".exmaild"
    # Stable UUIDs: installing the profile again replaces the old one.
    ns = uuid.uuid5(uuid.NAMESPACE_DNS, cfg.server.hostname)
    mail: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail.{uuid.uuid5(ns, address).hex}",
        "PayloadUUID": str(uuid.uuid5(ns, "mail:" + address)).upper(),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAddress": address,
        "EmailAccountType": "EmailTypePOP" if inc and inc.protocol == "pop3" else "EmailTypeIMAP",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if inc is not None:
        mail.update({
            "IncomingMailServerHostName": cfg.server.hostname,
            "IncomingMailServerPortNumber": inc.port,
            "IncomingMailServerUseSSL": True,
            "IncomingMailServerUsername": address,
            "IncomingMailServerAuthentication": "EmailAuthPassword",
        })
    if out is not None:
        mail.update({
            "OutgoingMailServerHostName": cfg.server.hostname,
            "OutgoingMailServerPortNumber": out.port,
            "OutgoingMailServerUseSSL": True,
            "OutgoingMailServerUsername": address,
            "OutgoingMailServerAuthentication": "EmailAuthPassword",
        })
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.profile.{uuid.uuid5(ns, address).hex}",
        "PayloadUUID": str(uuid.uuid5(ns, "profile:" + address)).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadDescription": f"Mail account {address} on {cfg.server.hostname}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class AutoconfigResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self.cfg = app.cfg

    def _reply(self, request: IRequest, code: int, body: bytes, ctype: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"cache-control", b"no-store")
        return body

    def _arg(self, request: IRequest, *names: str) -> str | None:
        for name in names:
            values = request.args.get(name.encode())
            if values:
                return values[0].decode("utf-8", "replace")
        return None

    def render_GET(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace").lower().rstrip("/")
        if path in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"):
            given = self._arg(request, "emailaddress")
            address = valid_address(given)
            if given and address is None:
                return self._reply(request, 400, b"bad emailaddress\n", b"text/plain")
            host = request.getHeader("host")
            body = thunderbird(self.cfg, address, _domain(self.cfg, address, host))
            return self._reply(request, 200, body, b"application/xml; charset=utf-8")
        if path in ("/mobileconfig", "/email.mobileconfig"):
            address = valid_address(self._arg(request, "email", "emailaddress"))
            if address is None:
                return self._reply(request, 400, b"give ?email=ADDRESS\n", b"text/plain")
            request.setHeader(b"content-disposition",
                              f"attachment; filename*=UTF-8''{quote(address)}.mobileconfig")
            return self._reply(request, 200, mobileconfig(self.cfg, address),
                               b"application/x-apple-aspen-config")
        if path == "/autodiscover/autodiscover.xml":
            return self._reply(request, 405, b"POST an Autodiscover request\n", b"text/plain")
        return self._reply(request, 404, b"not found\n", b"text/plain")

    def render_POST(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace").lower()
        if path != "/autodiscover/autodiscover.xml":
            return self._reply(request, 404, b"not found\n", b"text/plain")
        address = request_address(request.content.read(MAX_BODY + 1)[:MAX_BODY])
        if address is None:
            return self._reply(request, 400, b"no EMailAddress in the request\n", b"text/plain")
        return self._reply(request, 200, autodiscover(self.cfg, address),
                           b"application/xml; charset=utf-8")


class _BoundedRequest(server.Request):
    """Refuses bodies over MAX_BODY (by Content-Length, or as they arrive)."""

    _refused = False

    def _refuse(self) -> None:
        self._refused = True
        self.channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n")
        self.channel.transport.loseConnection()

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.content is not None and self.content.tell() + len(data) > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()


def make_site(app: App) -> server.Site:
    site = server.Site(AutoconfigResource(app), requestFactory=_BoundedRequest)
    site.displayTracebacks = False
    return site


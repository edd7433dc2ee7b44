"""The sans-IO SMTP layer: replies, command parsing, relay classification, DATA transparency."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exmaild.codec.dotstuff import (
    DataResult,
    DotStuffer,
    Unstuffer,
    dot_stuff_chunks,
    unstuff,
)
from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.commands import (
    Address,
    AuthCommand,
    Body,
    Command,
    MailCommand,
    MailParams,
    Notify,
    OriginalRecipient,
    RcptCommand,
    RcptParams,
    Ret,
    SMTPSyntaxError,
    Verb,
    decode_sasl_response,
    decode_xtext,
    encode_xtext,
    parse_command,
)
from exmaild.protocols.smtp.relay import RelayTrick, classify_recipient
from exmaild.protocols.smtp.replies import Reply


def refused(line: bytes, **kwargs: bool) -> tuple[int, str | None]:
    with pytest.raises(SMTPSyntaxError) as info:
        parse_command(line, **kwargs)
    return info.value.reply.code, info.value.reply.enhanced


# --- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (R.OK, b"250 2.0.0 Ok\r\n"),
        (R.START_DATA, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (R.AUTH_CONTINUE, b"334 \r\n"),
        (R.auth_challenge(b"hi"), b"334 aGk=\r\n"),
        (Reply(550, "5.1.1", "one\ntwo"), b"550-5.1.1 one\r\n550 5.1.1 two\r\n"),
        (Reply(250, None, "a\r\nb"), b"250-a\r\n250 b\r\n"),  # a CR cannot forge lines
        (
            R.ehlo("mx.test", ["PIPELINING", "SIZE 10"]),
            b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
        ),
        (R.greeting("mx.test"), b"220 mx.test ESMTP exmaild\r\n"),
        (R.TIMEOUT.prefixed("mx.test"), b"421 4.4.2 mx.test Error: timeout exceeded\r\n"),
        (R.queued("ABC"), b"250 2.0.0 Ok: queued as ABC\r\n"),
        (R.unsupported_option("X=\x01\u00e9"), b"555 5.5.4 Unsupported option: X=??\r\n"),
    ],
)
def test_reply_encoding(reply: Reply, wire: bytes) -> None:
    assert reply.encode() == wire


@pytest.mark.parametrize(
    ("code", "enhanced"), [(250, "5.0.0"), (600, None), (199, None), (550, "5.1"), (550, "x.1.1")]
)
def test_reply_rejects_inconsistent_codes(code: int, enhanced: str | None) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, "x")


# The code choices the server relies on (RFC 5321/3463/3207/4954/6531/1870, Postfix).
@pytest.mark.parametrize(
    ("name", "code", "enhanced"),
    [
        ("BYE", 221, "2.0.0"),
        ("SENDER_OK", 250, "2.1.0"),
        ("RECIPIENT_OK", 250, "2.1.5"),
        ("READY_FOR_TLS", 220, "2.0.0"),
        ("AUTH_SUCCEEDED", 235, "2.7.0"),
        ("TIMEOUT", 421, "4.4.2"),
        ("TOO_MANY_ERRORS", 421, "4.7.0"),
        ("LOCAL_ERROR", 451, "4.3.0"),
        ("TOO_MANY_RECIPIENTS", 452, "4.5.3"),
        ("INSUFFICIENT_STORAGE", 452, "4.3.1"),
        ("TLS_NOT_AVAILABLE", 454, "4.7.0"),
        ("BAD_SYNTAX", 500, "5.5.2"),
        ("LINE_TOO_LONG", 500, "5.5.2"),
        ("AUTH_LINE_TOO_LONG", 500, "5.5.6"),
        ("SYNTAX_MAIL", 501, "5.5.4"),
        ("BAD_SENDER_SYNTAX", 501, "5.1.7"),
        ("BAD_RECIPIENT_SYNTAX", 501, "5.1.3"),
        ("NOT_IMPLEMENTED", 502, "5.5.1"),
        ("NOT_RECOGNIZED", 502, "5.5.2"),
        ("BAD_SEQUENCE", 503, "5.5.1"),
        ("ALREADY_AUTHENTICATED", 503, "5.5.1"),
        ("AUTH_MECHANISM_UNKNOWN", 504, "5.5.4"),
        ("STARTTLS_REQUIRED", 530, "5.7.0"),
        ("AUTH_FAILED", 535, "5.7.8"),
        ("ENCRYPTION_REQUIRED_FOR_AUTH", 538, "5.7.11"),
        ("USER_UNKNOWN", 550, "5.1.1"),
        ("MESSAGE_TOO_BIG", 552, "5.3.4"),
        ("SENDER_NOT_OWNED", 553, "5.7.1"),
        ("SMTPUTF8_REQUIRED", 553, "5.6.7"),
        ("RELAY_DENIED", 554, "5.7.1"),
        ("NO_VALID_RECIPIENTS", 554, "5.5.1"),
        ("UNSUPPORTED_PARAMETER", 555, "5.5.4"),
    ],
)
def test_reply_codes(name: str, code: int, enhanced: str) -> None:
    reply = getattr(R, name)
    assert (reply.code, reply.enhanced) == (code, enhanced)


# --- commands: accepted -----------------------------------------------------------------------

A = Address
MAIL_OK = [
    (b"MAIL FROM:<user@example.com>", A("user", "example.com"), MailParams()),
    (b"mail from: <user@example.com>", A("user", "example.com"), MailParams()),  # Postfix-style
    (b"MAIL FROM:<>", None, MailParams()),
    (b"MAIL FROM:<> SIZE=0", None, MailParams(size=0)),
    (b"MAIL FROM:<@relay.example,@b.example:u@example.com>", A("u", "example.com"), MailParams()),
    (
        b"MAIL FROM:<a@b.example>  size=000123   body=8bitmime",
        A("a", "b.example"),
        MailParams(size=123, body=Body.EIGHT_BIT_MIME),
    ),
    (
        b"MAIL FROM:<a@b.example> BODY=7BIT RET=hdrs ENVID=QQ+2B1+3D AUTH=<>",
        A("a", "b.example"),
        MailParams(body=Body.SEVEN_BIT, ret=Ret.HDRS, envid="QQ+1=", auth="<>"),
    ),
    (
        b"MAIL FROM:<a@b.example> AUTH=e+3Dmc2@example.com RET=FULL",
        A("a", "b.example"),
        MailParams(auth="e=mc2@example.com", ret=Ret.FULL),
    ),
    (
        b"MAIL FROM:<a@b.example> SIZE=99999999999999999999",
        A("a", "b.example"),
        MailParams(size=99999999999999999999),
    ),
    (
        "MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode(),
        A("jörg", "bücher.example"),
        MailParams(smtputf8=True),
    ),
    (b"MAIL FROM:<a@[IPv6:2001:DB8:0::1]>", A("a", "[IPv6:2001:db8::1]"), MailParams()),
    (b"MAIL FROM:<a@[192.000.2.01]>", A("a", "[192.0.2.1]"), MailParams()),
    (b"MAIL FROM:<a@Example.COM.>", A("a", "Example.COM"), MailParams()),
]


@pytest.mark.parametrize(("line", "sender", "params"), MAIL_OK)
def test_mail_accepted(line: bytes, sender: Address | None, params: MailParams) -> None:
    cmd = parse_command(line)
    assert isinstance(cmd, MailCommand) and cmd.verb is Verb.MAIL
    assert (cmd.sender, cmd.params) == (sender, params)


RCPT_OK = [
    (b"RCPT TO:<user@example.com>", A("user", "example.com"), RcptParams()),
    (b"RCPT TO:<Postmaster>", A("Postmaster", ""), RcptParams()),
    (b"rcpt to: <postmaster@example.com>", A("postmaster", "example.com"), RcptParams()),
    (b'RCPT TO:<"john..doe"@example.com>', A("john..doe", "example.com"), RcptParams()),
    (b'RCPT TO:<"a\\"b\\\\c"@example.com>', A('a"b\\c', "example.com"), RcptParams()),
    (b'RCPT TO:<""@example.com>', A("", "example.com"), RcptParams()),
    (
        b"RCPT TO:<u@example.com> NOTIFY=never",
        A("u", "example.com"),
        RcptParams(notify=frozenset({Notify.NEVER})),
    ),
    (
        b"RCPT TO:<u@example.com> NOTIFY=SUCCESS,delay,FAILURE ORCPT=rfc822;a+2Bb@example.com",
        A("u", "example.com"),
        RcptParams(
            notify=frozenset({Notify.SUCCESS, Notify.DELAY, Notify.FAILURE}),
            orcpt=OriginalRecipient("rfc822", "a+b@example.com"),
        ),
    ),
    (
        b"RCPT TO:<u@example.com> ORCPT=utf-8;j\\x{00F6}rg@example.com",
        A("u", "example.com"),
        RcptParams(orcpt=OriginalRecipient("utf-8", "j\\x{00F6}rg@example.com")),
    ),
]


@pytest.mark.parametrize(("line", "recipient", "params"), RCPT_OK)
def test_rcpt_accepted(line: bytes, recipient: Address, params: RcptParams) -> None:
    cmd = parse_command(line)
    assert isinstance(cmd, RcptCommand) and cmd.verb is Verb.RCPT
    assert (cmd.recipient, cmd.params) == (recipient, params)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"HELO mx.example", Command(Verb.HELO, "mx.example")),
        (b"ehlo [192.0.2.1]", Command(Verb.EHLO, "[192.0.2.1]")),
        (b"  EHLO   client.example  ", Command(Verb.EHLO, "client.example")),
        (b"DATA", Command(Verb.DATA)),
        (b"rset", Command(Verb.RSET)),
        (b"NOOP", Command(Verb.NOOP)),
        (b"NOOP whatever you like", Command(Verb.NOOP, "whatever you like")),  # RFC 5321 §4.1.1.9
        (b"QUIT", Command(Verb.QUIT)),
        (b"QUIT now please", Command(Verb.QUIT)),
        (b"STARTTLS", Command(Verb.STARTTLS)),
        (b"HELP", Command(Verb.HELP)),
        (b"HELP MAIL", Command(Verb.HELP, "MAIL")),
        (b"VRFY postmaster", Command(Verb.VRFY, "postmaster")),
        (b"EXPN staff", Command(Verb.EXPN, "staff")),
        (b"AUTH plain", AuthCommand(verb=Verb.AUTH, arg="plain", mechanism="PLAIN")),
        (
            b"AUTH PLAIN =",
            AuthCommand(verb=Verb.AUTH, arg="PLAIN =", mechanism="PLAIN", initial_response="="),
        ),
        (
            b"AUTH LOGIN dXNlcg==",
            AuthCommand(
                verb=Verb.AUTH, arg="LOGIN dXNlcg==", mechanism="LOGIN", initial_response="dXNlcg=="
            ),
        ),
        (
            b"AUTH SCRAM-SHA-256",
            AuthCommand(verb=Verb.AUTH, arg="SCRAM-SHA-256", mechanism="SCRAM-SHA-256"),
        ),
    ],
)
def test_simple_commands(line: bytes, expected: Command) -> None:
    assert parse_command(line) == expected


def test_utf8_recipient_needs_smtputf8_transaction() -> None:
    line = "RCPT TO:<jörg@Bücher.example>".encode()
    assert refused(line) == (553, "5.6.7")
    cmd = parse_command(line, smtputf8=True)
    assert isinstance(cmd, RcptCommand)
    assert cmd.recipient == A("jörg", "Bücher.example")
    assert cmd.recipient.domain_ascii == "xn--bcher-kva.example"


def test_bare_address_only_when_allowed() -> None:
    assert refused(b"MAIL FROM:user@example.com") == (501, "5.1.7")
    assert refused(b"RCPT TO:user@example.com") == (501, "5.1.3")
    cmd = parse_command(b"MAIL FROM:user@example.com SIZE=5", allow_bare_address=True)
    assert isinstance(cmd, MailCommand)
    assert (cmd.sender, cmd.params.size) == (A("user", "example.com"), 5)
    cmd = parse_command(b"RCPT TO:postmaster", allow_bare_address=True)
    assert isinstance(cmd, RcptCommand) and cmd.recipient == A("postmaster", "")
    cmd = parse_command(b"RCPT TO:<u@example.com>", allow_bare_address=True)
    assert isinstance(cmd, RcptCommand) and cmd.recipient == A("u", "example.com")


def test_auth_initial_response_may_be_long() -> None:
    line = b"AUTH GSSAPI " + b"A" * 8000
    assert isinstance(parse_command(line), AuthCommand)
    assert refused(b"AUTH GSSAPI " + b"A" * 13000) == (500, "5.5.6")
    assert refused(b"NOOP " + b"A" * 3000) == (500, "5.5.2")


# --- commands: refused ------------------------------------------------------------------------
LONG_LABEL = b"a" * 64
LONG_DOMAIN = b".".join([b"a" * 60] * 5)

REFUSED = [
    # framing and verbs
    (b"", 500, "5.5.2"),
    (b"   ", 500, "5.5.2"),
    (b"\xff\xfe", 500, "5.5.2"),
    (b"MAIL FROM:<a@b.example>\x00", 500, "5.5.2"),
    (b"MAIL FROM:<a@b.example>\rRCPT TO:<x@y>", 500, "5.5.2"),
    ("RCPT TO:<a\u0085b@example.com>".encode(), 500, "5.5.2"),
    (b"FOO bar", 502, "5.5.2"),
    ("M\u0131IL FROM:<a@b>".encode(), 502, "5.5.2"),  # dotless i upper-cases to I
    (b"BDAT 100 LAST", 502, "5.5.1"),
    (b"ETRN example.com", 502, "5.5.1"),
    (b"HELO", 501, "5.5.4"),
    (b"EHLO ", 501, "5.5.4"),
    (b"DATA now", 501, "5.5.4"),
    (b"RSET x", 501, "5.5.4"),
    (b"STARTTLS please", 501, "5.5.4"),
    (b"VRFY", 501, "5.5.4"),
    (b"EXPN", 501, "5.5.4"),
    (b"AUTH", 501, "5.5.4"),
    (b"AUTH PL@IN", 501, "5.5.4"),
    (b"AUTH PLAIN a b", 501, "5.5.4"),
    (b"AUTH ABCDEFGHIJKLMNOPQRSTU", 501, "5.5.4"),  # 21 characters
    # MAIL syntax
    (b"MAIL", 501, "5.5.4"),
    (b"MAIL TO:<a@b.example>", 501, "5.5.4"),
    (b"MAIL FROM:", 501, "5.5.4"),
    (b"MAIL FROM :<a@b.example>", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.example>SIZE=1", 501, "5.1.7"),
    (b"MAIL FROM:<a b@example.com>", 501, "5.1.7"),
    (b"MAIL FROM:<.a@example.com>", 501, "5.1.7"),
    (b"MAIL FROM:<a.@example.com>", 501, "5.1.7"),
    (b"MAIL FROM:<a..b@example.com>", 501, "5.1.7"),
    (b"MAIL FROM:<a\\@b@example.com>", 501, "5.1.7"),
    (b'MAIL FROM:<"a@example.com>', 501, "5.1.7"),
    (b"MAIL FROM:<a@>", 501, "5.1.7"),
    (b"MAIL FROM:<a>", 501, "5.1.7"),
    (b"MAIL FROM:<@example.com>", 501, "5.1.7"),
    (b"MAIL FROM:<a@-b.example>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b-.example>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b..example>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.example..>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b_c.example>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.example:25>", 501, "5.1.7"),
    (b"MAIL FROM:<a@" + LONG_LABEL + b".example>", 501, "5.1.7"),
    (b"MAIL FROM:<a@" + LONG_DOMAIN + b">", 501, "5.1.7"),
    (b"MAIL FROM:<a@[1.2.3]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[256.1.1.1]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[1234.1.1.1]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[IPv6:zz::1]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[IPv6:fe80::1%eth0]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[x-tag:stuff]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[]>", 501, "5.1.7"),
    (b"MAIL FROM:<@a.example:>", 501, "5.1.7"),
    (b"MAIL FROM:<@a.example,b.example:u@c.example>", 501, "5.1.7"),
    (b"MAIL FROM:<<a@b.example>>", 501, "5.1.7"),
    (b"MAIL FROM:<Name <a@b.example>>", 501, "5.1.7"),
    # MAIL parameters
    (b"MAIL FROM:<a@b.example> SIZE=abc", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SIZE=", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SIZE", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SIZE=-1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SIZE=123456789012345678901", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SIZE=1 size=2", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> BODY=9BIT", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> BODY", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> X-FOO=bar", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> =x", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> NOTIFY=NEVER", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> <c@d.example>", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.example> RET=NONE", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> RET", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> RET=FULL RET=HDRS", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> ENVID=", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> ENVID=a+zz", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> ENVID=a+0Db", 501, "5.5.4"),  # CR: header injection
    (b"MAIL FROM:<a@b.example> ENVID=" + b"x" * 101, 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> AUTH=nobody", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.example> AUTH=<> AUTH=<>", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example> BODY=8B\u0131TMIME".encode(), 555, "5.5.4"),
    # UTF-8 without SMTPUTF8 (RFC 6531 §3.5)
    ("MAIL FROM:<jörg@example.com>".encode(), 553, "5.6.7"),
    ("MAIL FROM:<a@bücher.example>".encode(), 553, "5.6.7"),
    ('MAIL FROM:<"jö rg"@example.com>'.encode(), 553, "5.6.7"),
    # ... and UTF-8 that is not a valid IDN even with it
    ("MAIL FROM:<a@ｅxample.com> SMTPUTF8".encode(), 501, "5.1.7"),
    # RCPT
    (b"RCPT", 501, "5.5.4"),
    (b"RCPT TO:", 501, "5.5.4"),
    (b"RCPT FROM:<a@b.example>", 501, "5.5.4"),
    (b"RCPT TO:<>", 501, "5.1.3"),
    (b"RCPT TO:<postmaster>x", 501, "5.1.3"),
    (b"RCPT TO:<postmasters>", 501, "5.1.3"),
    (b'RCPT TO:<"postmaster">', 501, "5.1.3"),
    (b"RCPT TO:<u@example.com> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> NOTIFY=SOMETIMES", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> NOTIFY=", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> NOTIFY=SUCCESS,SUCCESS", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> NOTIFY=DELAY NOTIFY=DELAY", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> ORCPT=u@example.com", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> ORCPT=;u@example.com", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> ORCPT=rfc822;", 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> ORCPT=rfc822;" + b"x" * 501, 501, "5.5.4"),
    (b"RCPT TO:<u@example.com> SIZE=10", 555, "5.5.4"),
    ("RCPT TO:<jörg@example.com>".encode(), 553, "5.6.7"),
]


@pytest.mark.parametrize(("line", "code", "enhanced"), REFUSED)
def test_refused(line: bytes, code: int, enhanced: str) -> None:
    assert refused(line) == (code, enhanced)


# --- addresses, xtext, SASL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (A("user", "example.com"), "user@example.com"),
        (A("a b", "x.example"), '"a b"@x.example'),
        (A('a"b\\c', "x.example"), '"a\\"b\\\\c"@x.example'),
        (A("a..b", "x.example"), '"a..b"@x.example'),
        (A("", "x.example"), '""@x.example'),
        (A("user@other.example", "x.example"), '"user@other.example"@x.example'),
        (A("Postmaster", ""), "Postmaster"),
        (A("jörg", "bücher.example"), "jörg@bücher.example"),
    ],
)
def test_address_text(address: Address, text: str) -> None:
    assert address.text == str(address) == text


def test_address_normalisation() -> None:
    assert A("User", "EXAMPLE.COM.").normalised() == A("User", "example.com")
    assert A("u", "[IPv6:0:0::1]").normalised() == A("u", "[IPv6:::1]")
    assert A("u", "Bücher.Example").domain_ascii == "xn--bcher-kva.example"
    assert A("u", "XN--BCHER-KVA.example").normalised().domain == "xn--bcher-kva.example"
    quoted = parse_command(b'RCPT TO:<"abc"@example.com>')
    assert isinstance(quoted, RcptCommand) and quoted.recipient.text == "abc@example.com"


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_any_ascii_local_part_round_trips(local: str) -> None:
    line = f"RCPT TO:<{A(local, 'example.com').text}>".encode()
    cmd = parse_command(line)
    assert isinstance(cmd, RcptCommand) and cmd.recipient == A(local, "example.com")


@given(st.text(max_size=60))
def test_xtext_round_trips_printable_ascii(text: str) -> None:
    text = "".join(c for c in text if " " <= c <= "~")
    assert decode_xtext(encode_xtext(text)) == text


def test_sasl_responses() -> None:
    assert decode_sasl_response("dGVzdA==") == b"test"
    assert decode_sasl_response(b"dGVzdA==") == b"test"
    assert decode_sasl_response("") == b""
    assert decode_sasl_response("=", initial=True) == b""
    for bad in ("=", "dGVzdA", "d G", b"\xffx"):
        with pytest.raises(SMTPSyntaxError) as info:
            decode_sasl_response(bad)
        assert (info.value.reply.code, info.value.reply.enhanced) == (501, "5.5.2")
    with pytest.raises(SMTPSyntaxError) as info:
        decode_sasl_response("*")
    assert info.value.reply == R.AUTH_ABORTED


# --- relay ------------------------------------------------------------------------------------
OURS = {"ourdomain.test", "xn--bcher-kva.example"}
UNKNOWN = (550, "5.1.1")
RELAY = (554, "5.7.1")

# (RCPT path, SMTPUTF8 transaction, expected: None = accept, (code, enhanced) = refuse)
RELAY_TRICKS = [
    ("<user@ourdomain.test>", False, None),
    ("<USER@OURDOMAIN.TEST>", False, None),  # domains are case-insensitive
    ("<user@ourdomain.test.>", False, None),  # trailing dot stripped, then judged
    ("<postmaster>", False, None),  # RFC 5321 §4.5.1 requires it
    ("<POSTMASTER>", False, None),
    ("<postmaster@ourdomain.test>", False, None),
    ("<@evil.example:user@ourdomain.test>", False, None),  # route ignored
    ("<user@bücher.example>", True, None),
    ("<user@BÜCHER.example>", True, None),
    ("<user@xn--bcher-kva.example>", False, None),
    ("<user@other.example>", False, RELAY),
    ("<user@other.example.>", False, RELAY),
    ("<postmaster@other.example>", False, RELAY),
    ("<user%other.example@ourdomain.test>", False, UNKNOWN),  # percent hack
    ("<USER%OTHER.EXAMPLE@OURDOMAIN.TEST>", False, UNKNOWN),
    ('<"user%other.example"@ourdomain.test>', False, UNKNOWN),
    ("<other.example!user@ourdomain.test>", False, UNKNOWN),  # bang path
    ('<"user@other.example"@ourdomain.test>', False, UNKNOWN),  # quoted @
    ('<"user\\@other.example"@ourdomain.test>', False, UNKNOWN),
    ('<"@other.example:user"@ourdomain.test>', False, UNKNOWN),
    ('<""@ourdomain.test>', False, UNKNOWN),  # empty local part
    ("<@ourdomain.test:user@other.example>", False, RELAY),  # route stripped: other
    ("<@ourdomain.test,@ourdomain.test:user@other.example>", False, RELAY),
    ("<user%ourdomain.test@other.example>", False, RELAY),
    ("<user@[127.0.0.1]>", False, RELAY),  # literals are not ours unless configured
    ("<user@[IPv6:::1]>", False, RELAY),
    ("<user@127.0.0.1>", False, RELAY),  # a dotted quad as a domain name
    ("<user@ourdomain.test.other.example>", False, RELAY),  # no suffix matching
    ("<user@sub.ourdomain.test>", False, RELAY),
    ("<user@xourdomain.test>", False, RELAY),
    ("<user@ourdomаin.test>", True, RELAY),  # Cyrillic а: xn--ourdomin-66g.test
    ("<user@ourdomаin.test>", False, (553, "5.6.7")),
    ("<user@ｏｕｒdomain.test>", True, (501, "5.1.3")),  # full-width: not IDNA 2008
    ("<user@ourdomain.test@other.example>", False, (501, "5.1.3")),
    ("<user@other.example,>", False, (501, "5.1.3")),
    ("<user@other.example>,<x@ourdomain.test>", False, (501, "5.1.3")),
    ("< user@other.example >", False, (501, "5.1.3")),
    ("<user @ourdomain.test>", False, (501, "5.1.3")),
    ("<@ourdomain.test>", False, (501, "5.1.3")),
    ("<user\\@other.example@ourdomain.test>", False, (501, "5.1.3")),
    ("<user@ourdomain.test\\>", False, (501, "5.1.3")),
    ("<user@[ourdomain.test]>", False, (501, "5.1.3")),
    ("<user@ourdomain.test> <x@other.example>", False, (555, "5.5.4")),
    ("<user@ourdomain.test>\x00<x@other.example>", False, (500, "5.5.2")),
    ("user@ourdomain.test", False, (501, "5.1.3")),
]


@pytest.mark.parametrize(("path", "smtputf8", "expected"), RELAY_TRICKS)
def test_relay_tricks(path: str, smtputf8: bool, expected: tuple[int, str] | None) -> None:
    try:
        cmd = parse_command(f"RCPT TO:{path}".encode(), smtputf8=smtputf8)
    except SMTPSyntaxError as exc:
        outcome = (exc.reply.code, exc.reply.enhanced)
    else:
        assert isinstance(cmd, RcptCommand)
        reply = classify_recipient(cmd.recipient, OURS.__contains__).refusal()
        outcome = reply and (reply.code, reply.enhanced)
    assert outcome == expected


def test_relay_classification_details() -> None:
    asked: list[str] = []

    def ours(domain: str) -> bool:
        asked.append(domain)
        return domain in OURS

    result = classify_recipient(A("u", "BÜCHER.example."), ours)
    assert asked == ["xn--bcher-kva.example"]
    assert result.local and result.deliverable and result.trick is None
    assert result.address == A("u", "bücher.example")

    trick = classify_recipient(A("u%x.example", "ourdomain.test"), ours)
    assert (trick.local, trick.deliverable, trick.trick) == (True, False, RelayTrick.PERCENT_HACK)
    refusal = trick.refusal(relay_permitted=True)  # even an authenticated user
    assert refusal is not None and refusal.code == 550
    assert refusal.text == "<u%x.example@ourdomain.test>: Recipient address rejected: User unknown"

    remote = classify_recipient(A("u!x", "other.example"), ours)
    assert (remote.local, remote.trick) == (False, RelayTrick.BANG_PATH)
    assert remote.refusal(relay_permitted=True) is None  # the remote domain's business
    assert remote.refusal() == R.RELAY_DENIED.prefixed("<u!x@other.example>:")

    literal = A("u", "[192.0.2.10]")
    assert not classify_recipient(literal, ours).local
    mine = classify_recipient(literal, ours, local_ips={ipaddress.ip_address("192.0.2.10")})
    assert mine.deliverable
    v6 = classify_recipient(
        A("u", "[IPv6:2001:DB8::1]"), ours, local_ips={ipaddress.ip_address("2001:db8::1")}
    )
    assert v6.deliverable


# --- DATA: un-stuffing ------------------------------------------------------------------------


def feed_chunks(data: bytes, sizes: list[int], max_size: int | None = None) -> DataResult | None:
    reader = Unstuffer(max_size)
    pos = 0
    for size in [*sizes, len(data)]:
        chunk, pos = data[pos : pos + size], pos + size
        result = reader.feed(chunk)
        if result is not None:
            # Whatever was not fed yet follows the terminator too.
            return dataclasses.replace(result, rest=result.rest + data[pos:])
    return None


# (received, message, rest, bare_lf)
UNSTUFF = [
    (b".\r\n", b"", b"", False),  # empty message: the terminator is the first line
    (b".\r\nQUIT\r\n", b"", b"QUIT\r\n", False),
    (b"\r\n.\r\n", b"\r\n", b"", False),
    (b"a\r\n.\r\n", b"a\r\n", b"", False),
    (b"..\r\n.\r\n", b".\r\n", b"", False),  # leading ".." at the start of the data
    (b"..a\r\n..b\r\n.\r\n", b".a\r\n.b\r\n", b"", False),
    (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", b"", False),
    (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", b"", False),
    (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", b"", False),  # unstuffed dot: dropped (§4.5.2)
    (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n", b"", False),
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b"", True),  # smuggling: LF.LF is no end
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b"", True),  # nor is LF.CRLF
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b"", True),  # nor CRLF.LF
    (b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n", False),
    (
        b"x\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
        b"x\r\n",
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
        False,
    ),
    (b"a\r\r\n.\r\n", b"a\r\r\n", b"", False),
    (b"\n.\r\n.\r\n", b"\n.\r\n", b"", True),
]


@pytest.mark.parametrize(("data", "message", "rest", "bare_lf"), UNSTUFF)
def test_unstuff_edge_cases(data: bytes, message: bytes, rest: bytes, bare_lf: bool) -> None:
    expected = DataResult(message, len(message), False, rest)
    assert unstuff(data) == expected
    assert expected.bare_lf == bare_lf
    assert feed_chunks(data, [1] * len(data)) == expected  # one byte at a time
    for cut in range(len(data) + 1):  # every single split point
        assert feed_chunks(data, [cut]) == expected
    for a in range(len(data)):  # every pair of split points
        for b in range(a, len(data)):
            assert feed_chunks(data, [a, b - a]) == expected


def test_unstuff_incomplete_and_after_done() -> None:
    reader = Unstuffer()
    for chunk in (b"a\r\n", b".", b"\r", b"b\r\n", b".\r"):
        assert reader.feed(chunk) is None and not reader.done
    result = reader.feed(b"\nrest")
    assert result == DataResult(b"a\r\n\rb\r\n", 7, False, b"rest")
    assert reader.done
    with pytest.raises(RuntimeError):
        reader.feed(b"more")
    assert unstuff(b"no terminator\r\n.") is None


@pytest.mark.parametrize(
    ("max_size", "oversized"), [(None, False), (10, False), (9, True), (0, True)]
)
def test_unstuff_size_limit(max_size: int | None, oversized: bool) -> None:
    data = b"abc\r\n..de\r\n.\r\nQUIT\r\n"  # 10 octets once unstuffed
    result = unstuff(data, max_size)
    assert result is not None
    assert (result.size, result.oversized, result.rest) == (10, oversized, b"QUIT\r\n")
    assert result.message == (b"" if oversized else b"abc\r\n.de\r\n")
    assert feed_chunks(data, [1] * len(data), max_size) == result


LINE = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
CRLF_TEXT = st.lists(LINE, max_size=20).map(lambda ls: b"".join(x + b"\r\n" for x in ls))


def random_sizes(data: st.DataObject, total: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, max(total, 1)), max_size=12))


@given(CRLF_TEXT, st.binary(max_size=20), st.data())
def test_unstuff_inverts_stuff_under_any_chunking(
    text: bytes, after: bytes, data: st.DataObject
) -> None:
    wire = dot_stuff_chunks(text) + after
    result = feed_chunks(wire, random_sizes(data, len(wire)))
    assert result == DataResult(text, len(text), False, after)


@given(st.binary(max_size=200), st.data())
def test_unstuff_chunking_never_matters(wire: bytes, data: st.DataObject) -> None:
    assert feed_chunks(wire, random_sizes(data, len(wire))) == unstuff(wire)


def reference_unstuff(wire: bytes) -> DataResult | None:
    """RFC 5321 §4.5.2 read literally, line by line: obviously right, slow."""
    data = b"\r\n" + wire
    end = data.find(b"\r\n.\r\n")
    if end < 0:
        return None
    lines = data[2 : end + 2].split(b"\r\n")
    message = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return DataResult(message, len(message), False, data[end + 5 :])


# Pieces that make dots, CRs and LFs meet in every order, for the fast path to get wrong.
DOTTY = st.lists(st.sampled_from([b"\r", b"\n", b".", b"..", b"a", b"\r\n", b"\r\n."]), max_size=60)


@settings(max_examples=400)
@given(DOTTY.map(b"".join), st.data())
def test_unstuff_matches_line_by_line_reference(wire: bytes, data: st.DataObject) -> None:
    assert feed_chunks(wire, random_sizes(data, len(wire))) == reference_unstuff(wire)


@given(st.binary(max_size=200))
def test_stuffed_data_ends_exactly_at_its_terminator(payload: bytes) -> None:
    # Whatever bytes a stored message holds, what we send cannot end early (no smuggling).
    result = unstuff(dot_stuff_chunks(payload))
    assert result is not None and result.rest == b"" and not result.bare_lf


# --- DATA: stuffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),  # bare LF made CRLF, then stuffed
        (b"a\r.\r", b"a\r\n..\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert dot_stuff_chunks(message) == wire


@given(st.binary(max_size=200), st.data())
def test_streaming_stuffer_matches_one_shot(payload: bytes, data: st.DataObject) -> None:
    stuffer, out, pos = DotStuffer(), [], 0
    for size in random_sizes(data, len(payload)):
        out.append(stuffer.feed(payload[pos : pos + size]))
        pos += size
    out.append(stuffer.feed(payload[pos:]))
    assert b"".join(out) + stuffer.end() == dot_stuff_chunks(payload)


# --- fuzzing the command parser ---------------------------------------------------------------
PREFIXES = [b"", b"MAIL FROM:", b"MAIL FROM:<", b"RCPT TO:<", b"RCPT TO:", b"AUTH ", b"EHLO "]
SUFFIXES = [b"", b">", b"@example.com>", b"> SIZE=1", b"> NOTIFY=", b"> ORCPT=rfc822;"]


def assert_only_syntax_errors(line: bytes, smtputf8: bool, bare: bool) -> None:
    try:
        cmd = parse_command(line, smtputf8=smtputf8, allow_bare_address=bare)
    except SMTPSyntaxError as exc:
        assert exc.reply.is_error and exc.reply.encode().endswith(b"\r\n")
    else:
        assert isinstance(cmd, Command)
        if isinstance(cmd, RcptCommand):
            classify_recipient(cmd.recipient, OURS.__contains__)
            assert cmd.recipient.domain_ascii.isascii()


@settings(max_examples=600)
@given(
    st.sampled_from(PREFIXES),
    st.binary(max_size=80),
    st.sampled_from(SUFFIXES),
    st.booleans(),
    st.booleans(),
)
def test_parser_raises_only_syntax_errors_on_bytes(
    prefix: bytes, middle: bytes, suffix: bytes, smtputf8: bool, bare: bool
) -> None:
    assert_only_syntax_errors(prefix + middle + suffix, smtputf8, bare)


ADDRESS_CHARS = st.sampled_from(list('aZ0.@<>:,[]"\\ %!-_=+;é\u0430ｅ\u200d') + ["IPv6:", "::1"])


@settings(max_examples=600)
@given(
    st.sampled_from(PREFIXES),
    st.lists(ADDRESS_CHARS, max_size=30).map("".join),
    st.sampled_from(SUFFIXES),
    st.booleans(),
    st.booleans(),
)
def test_parser_raises_only_syntax_errors_on_address_like_text(
    prefix: bytes, middle: str, suffix: bytes, smtputf8: bool, bare: bool
) -> None:
    assert_only_syntax_errors(prefix + middle.encode() + suffix, smtputf8, bare)


def test_a_forked_child_draws_queue_ids_of_its_own() -> None:
    """Two nodes started from one pre-forked parent (the test zygote does so)
    must not repeat each other's queue ids: the column is unique."""
    import os

    from exmaild.protocols.smtp.session import new_queue_id

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id through the pipe, then gone
        try:
            os.write(w, new_queue_id().encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 12 and child != new_queue_id()

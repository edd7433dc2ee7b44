"""Property-based fuzzing of whole IMAP sessions (hypothesis).

Random command sequences — well-formed, half-formed and garbage, with
literals, Chinese mailbox names, odd sequence sets — go to a logged-in
session over a real socket. Whatever they are, every tagged command gets a
tagged answer, never ``[SERVERBUG]``, and the connection stays usable (or is
closed with a BYE after too many bad commands).
"""

from __future__ import annotations

import os

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmaild.store import flags as fl

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture, mail  # noqa: F401

EXAMPLES = int(os.environ.get("EXMAILD_FUZZ_EXAMPLES", "100"))

seqsets = st.one_of(
    st.sampled_from(["1", "1:*", "*", "2:4", "1,3,5", "*:2", "0", "4294967296", "1:", ",", "9"]),
    st.lists(st.integers(1, 12), min_size=1, max_size=5).map(lambda xs: ",".join(map(str, xs))),
)
fetch_items = st.sampled_from([
    "FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
    "BODY.PEEK[]", "BODY[]<0.10>", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]<3.7>", "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]", "BODY.PEEK[2.1]", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (DATE)]", "RFC822", "RFC822.HEADER", "MODSEQ", "ALL", "FAST",
    "BODY[99]", "BODY.PEEK[1.2.3.4]", "BOGUS", "BODY[", "BODY[]<5>",
])
flag_lists = st.lists(
    st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "\\Draft", "\\Answered", "$Work",
                     "\\Recent", "\\Bogus", "tag1"]), max_size=4,
).map(lambda xs: "(" + " ".join(xs) + ")")
mailboxes = st.sampled_from([
    "INBOX", "inbox", "Sent", "Junk", '"Sent Items"', "Nope", '"&W6JiNw-"', '"a/b/c"', '""',
    '"&"', '"x&AAA"', "{3+}\r\nFoo", '"已发送"', "Deleted", '"Deep/1/2/3/4/5/6/7/8/9/10"',
])
search_keys = st.sampled_from([
    "ALL", "SEEN", "UNSEEN", "NEW", "OLD", "DELETED", "SUBJECT hello", "FROM bob", "TO x",
    "BODY text", "TEXT hi", "LARGER 10", "SMALLER 1000000", "SINCE 1-Jan-2020",
    "BEFORE 1-Jan-2030", "ON 27-Nov-2026", "UID 1:*", "1:3", "NOT SEEN", "OR SEEN FLAGGED",
    "KEYWORD $Work", "HEADER Message-ID x", "MODSEQ 1", "(SEEN UNSEEN)", "CHARSET UTF-8 ALL",
    "CHARSET NOPE ALL", "SENTSINCE 1-Jan-2000", "FOO", "(", "OR",
])

command = st.one_of(
    st.builds(lambda u, s, i: f"{u}FETCH {s} ({i})", st.sampled_from(["", "UID "]), seqsets,
              st.lists(fetch_items, min_size=1, max_size=3).map(" ".join)),
    st.builds(lambda u, s, m, f: f"{u}STORE {s} {m} {f}", st.sampled_from(["", "UID "]),
              seqsets, st.sampled_from(["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT", "X"]),
              flag_lists),
    st.builds(lambda u, c, s, m: f"{u}{c} {s} {m}", st.sampled_from(["", "UID "]),
              st.sampled_from(["COPY", "MOVE"]), seqsets, mailboxes),
    st.builds(lambda u, k: f"{u}SEARCH {k}", st.sampled_from(["", "UID "]),
              st.lists(search_keys, min_size=1, max_size=3).map(" ".join)),
    st.builds(lambda c, m: f"{c} {m}", st.sampled_from(
        ["SELECT", "EXAMINE", "CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"]),
        mailboxes),
    st.builds(lambda a, b: f"RENAME {a} {b}", mailboxes, mailboxes),
    st.builds(lambda m: f"STATUS {m} (MESSAGES UNSEEN UIDNEXT HIGHESTMODSEQ RECENT)", mailboxes),
    st.builds(lambda r, p: f'LIST "{r}" "{p}"', st.sampled_from(["", "Sent/", "INBOX"]),
              st.sampled_from(["*", "%", "", "Se*", "%/%"])),
    st.builds(lambda m, f: f"APPEND {m} {f} {{20+}}\r\n" + "Subject: fuzz\r\n\r\nabcd",
              mailboxes, flag_lists),
    st.sampled_from([
        "NOOP", "CHECK", "EXPUNGE", "UID EXPUNGE 1:*", "CAPABILITY", "NAMESPACE", "UNSELECT",
        "CLOSE", "ENABLE CONDSTORE", "ID NIL", 'ID ("a" "b")', 'GETQUOTA ""', "LSUB \"\" *",
        "XLIST \"\" *", "LOGIN a b", "STARTTLS", "FETCH", "STORE 1", "UID", "UID NOOP",
        'SELECT INBOX (CONDSTORE)', "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
        "STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)", "AUTHENTICATE PLAIN",
    ]),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"{" not in b).map(
        lambda b: b.decode("latin-1")),
)


@pytest_twisted.ensureDeferred
async def test_random_sessions_never_break_the_server(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(6):
        await imap_server.deliver(acct.id, mail(f"fuzz {i}", "x\r\n" * i), flags=fl.SEEN * (i % 2))
    await imap_server.deliver(acct.id, (
        b'Subject: mp\r\nContent-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n\r\none\r\n'
        b"--q\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner\r\n--q--\r\n"))
    state: dict[str, Raw] = {}

    def session() -> Raw:
        r = state.get("r")
        if r is None:
            r = Raw(imap_server.port, timeout=30)
            r.login()
            r.cmd("s", "SELECT INBOX")
            state["r"] = r
        return r

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(command, min_size=1, max_size=8))
    def check(commands: list[str]) -> None:
        r = session()
        for n, text in enumerate(commands):
            tag = f"z{n}"
            if text.startswith("AUTHENTICATE"):
                continue  # would wait for a SASL line
            r.send(f"{tag} {text}\r\n".encode("utf-8", "surrogateescape"))
            try:
                out = []
                while True:
                    line = r.line()
                    out.append(line)
                    if b"[SERVERBUG]" in line:
                        raise AssertionError(f"{text!r} -> {out}")
                    if line.startswith(f"{tag} ".encode()) or line.startswith(b"* BYE"):
                        break
                    if line.endswith(b"}") and b"{" in line:
                        n_bytes = int(line[line.rindex(b"{") + 1 : -1])
                        r.read_exact(n_bytes)
            except (TimeoutError, ConnectionError):
                state.pop("r", None)
                raise
            if out[-1].startswith(b"* BYE") or text.startswith("STARTTLS"):
                state.pop("r", None)
                r.close()
                return
        out = r.cmd("p", "NOOP")
        assert out[-1] == b"p OK NOOP completed", out

    await blocking(check)


@pytest_twisted.ensureDeferred
async def test_random_bytes_never_break_the_server(imap_server: Server) -> None:
    await imap_server.account()

    @settings(max_examples=EXAMPLES // 2, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(min_size=1, max_size=3000))
    def check(data: bytes) -> None:
        r = Raw(imap_server.port, timeout=30)
        try:
            r.send(data)
            # Whatever came before, a fresh line gets a fresh answer (unless the
            # bytes opened a literal, which this line then feeds).
            r.send(b"\r\nzz NOOP\r\n")
            r.sock.settimeout(3)
            try:
                while not r.line().startswith(b"zz "):
                    pass
            except (TimeoutError, ConnectionError):
                pass
        finally:
            r.close()
        probe = Raw(imap_server.port)
        assert probe.cmd("q", "NOOP")[-1] == b"q OK NOOP completed"
        probe.close()

    await blocking(check)

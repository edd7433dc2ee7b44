"""The supervisor-worker pipes (exmaild/workers/channel.py) without processes:
framing bounds, the gap after a full pipe, and the notices reaching the
in-process ChangeNotifier."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.testing import StringTransport

from exmaild.store.changes import ChangeNotifier, MailboxChange
from exmaild.store.pgnotify import encode
from exmaild.workers.channel import GAP, MAX_LINE, LineSplitter, LocalNotifyRelay, ParentLink
from exmaild.workers.supervisor import node_id


def test_line_splitter_drops_overlong_lines_whole() -> None:
    sp = LineSplitter()
    assert sp.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert sp.feed(b":2}\n") == [b'{"b":2}']
    # A line past the bound is dropped, in however many pieces it comes,
    # and the next line is whole again.
    assert sp.feed(b"x" * (MAX_LINE + 1)) == []
    assert sp.feed(b"y" * 100) == []
    assert sp.feed(b'tail\n{"c":3}\n') == [b'{"c":3}']
    assert sp.dropped == 1
    assert sp.feed(b"\n\n") == []  # empty lines are nothing


def _link() -> tuple[ParentLink, StringTransport, list[bool]]:
    lost: list[bool] = []
    link = ParentLink(lambda: lost.append(True))
    tr = StringTransport()
    link.makeConnection(tr)
    return link, tr, lost


def test_parent_link_drops_while_paused_then_announces_a_gap() -> None:
    link, tr, lost = _link()
    assert tr.producer is link  # the pipe's buffer pauses us: memory stays bounded
    link.send(b'{"n":1}')
    link.pauseProducing()
    link.send(b'{"n":2}')
    link.send(b'{"n":3}')
    link.resumeProducing()
    link.send(b'{"n":4}')
    assert tr.value() == b'{"n":1}\n' + GAP + b'\n{"n":4}\n'
    link.connectionLost(None)
    assert lost == [True]
    link.send(b'{"n":5}')  # after the supervisor is gone: nothing, no error
    assert tr.value().endswith(b'{"n":4}\n')


def test_relay_publishes_other_workers_changes_and_rereads_after_a_gap() -> None:
    link, tr, _ = _link()
    notifier = ChangeNotifier()
    relay = LocalNotifyRelay(link, notifier, reactor=None)
    relay.start()
    seen: list[MailboxChange] = []
    notifier.subscribe(7, seen.append)

    # Our own change goes out on the pipe (and to our own listeners).
    notifier.publish(MailboxChange(7, "exists", (1,), 5))
    assert tr.value() == encode(MailboxChange(7, "exists", (1,), 5), relay.origin).encode() + b"\n"
    assert len(seen) == 1

    # Another worker's change comes in: published here; our own echo is not.
    other = encode(MailboxChange(7, "flags", (1,), 6), "someone-else").encode()
    link.dataReceived(other + b"\n" + encode(MailboxChange(7, "expunge", (1,), 7),
                                             relay.origin).encode() + b"\n")
    assert [c.kind for c in seen] == ["exists", "flags"]

    # A gap: every watched mailbox re-reads itself; junk is ignored.
    link.dataReceived(GAP + b"\n" + b'{"m":"not a number"}\n')
    assert [(c.kind, c.mailbox_id) for c in seen[2:]] == [("exists", 7)]

    relay.stop()
    assert notifier.relay is None
    link.dataReceived(other + b"\n")
    assert len(seen) == 3


def test_queue_kicks_go_to_the_other_workers_runners() -> None:
    link, tr, _ = _link()
    relay = LocalNotifyRelay(link, ChangeNotifier(), reactor=None)
    relay.start()
    kicks: list[str] = []
    relay.queue_hooks.append(lambda: kicks.append("scan"))

    relay.announce_queue()  # our runner is full: out on the pipe, not to ourselves
    assert tr.value() == b'{"o":"%s","q":1}\n' % relay.origin.encode()
    link.dataReceived(tr.value())  # our own kick echoed back: nothing
    assert kicks == []
    link.dataReceived(b'{"o":"someone-else","q":1}\n')
    assert kicks == ["scan"]
    link.dataReceived(GAP + b"\n")  # kicks may have been lost in a gap: scan
    assert kicks == ["scan", "scan"]
    relay.stop()


def test_worker_node_ids() -> None:
    assert node_id("node1", 1) == "node1-w1"
    assert node_id("mx-a", 12) == "mx-a-w12"


def _srs_forward(data_dir: str, out: Any) -> None:
    from exmaild.sieve.srs import srs_for

    cfg = SimpleNamespace(sieve=SimpleNamespace(srs_secret=""), data_dir=data_dir)
    out.put(srs_for(cfg).forward("a@x.test", "fwd.test", now=0))


def test_workers_making_the_srs_key_at_once_agree_on_it(tmp_path: Path) -> None:
    """Workers forwarding their first message at the same moment: one key for
    all, never an empty one (the old O_EXCL create let a racer read it empty)."""
    ctx = multiprocessing.get_context("fork")
    for i in range(60):
        d = tmp_path / str(i)
        q = ctx.Queue()
        procs = [ctx.Process(target=_srs_forward, args=(str(d), q)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert len({q.get(timeout=10) for _ in procs}) == 1
        assert len((d / "srs.key").read_bytes()) == 32
        assert [p.name for p in d.iterdir()] == ["srs.key"]

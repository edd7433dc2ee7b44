"""TRANSACTION state (RFC 1939 §5): STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP.

A mixin of `server.POP3Server`: it reads and marks the session's `Maildrop`
(deletions only take effect at QUIT) and streams messages through
`transfer.send_message`. RETR of a small message that was read ahead is
answered at once, in one write, without a trip to the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from exmaild.protocols.flow import OutputGate
from exmaild.protocols.pop3 import responses as r
from exmaild.protocols.pop3.commands import Command
from exmaild.protocols.pop3.encoder import MessageEncoder
from exmaild.protocols.pop3.maildrop import Maildrop
from exmaild.protocols.pop3.responses import Reply
from exmaild.protocols.pop3.transfer import (
    LISTING_PIECE,
    ConnectionGone,
    MessageGone,
    MessageReader,
    send_listing,
    send_message,
)


class MidResponse(Exception):
    """Reading a message failed after its response had begun."""


class TransactionCommands:
    # Provided by POP3Server.
    maildrop: Maildrop | None
    closed: bool
    stats: dict[str, int]
    _gate: OutputGate | None
    _reader: MessageReader | None
    reply: Callable[[Reply], None]
    write: Callable[[bytes], None]
    resetTimeout: Callable[[], None]
    _bad: Callable[[Reply], None]
    _good: Callable[[], None]

    def _message(self, number: int) -> int | None:
        """0-based index of a live message, or None after replying -ERR."""
        drop = self.maildrop
        assert drop is not None
        i = drop.index(number)
        if i is None:
            self._bad(r.NO_SUCH_MESSAGE.format(number=number))
            return None
        if i in drop.deleted:
            self._bad(r.ALREADY_DELETED.format(number=number))
            return None
        self._good()
        return i

    def do_STAT(self, cmd: Command) -> None:
        self._good()
        assert self.maildrop is not None
        self.reply(r.STAT.format(count=self.maildrop.count, size=self.maildrop.size))

    def do_NOOP(self, cmd: Command) -> None:
        self._good()
        self.reply(r.NOOP_OK)

    def do_RSET(self, cmd: Command) -> None:
        self._good()
        assert self.maildrop is not None
        self.maildrop.reset()
        self.reply(r.RSET_OK.format(count=self.maildrop.count, size=self.maildrop.size))

    def do_DELE(self, cmd: Command) -> None:
        number = int(cmd.args[0])
        i = self._message(number)
        if i is not None:
            assert self.maildrop is not None
            self.maildrop.delete(i)
            self.reply(r.DELE_OK.format(number=number))

    def do_LIST(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        drop = self.maildrop
        assert drop is not None
        if cmd.args:
            number = int(cmd.args[0])
            i = self._message(number)
            if i is not None:
                self.reply(r.SCAN_LISTING.format(number=number, size=drop.entries[i].size))
            return None
        self._good()
        return self._listing(r.LIST_FOLLOWS.format(count=drop.count, size=drop.size),
                             drop.listing("size"))

    def do_UIDL(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        drop = self.maildrop
        assert drop is not None
        if cmd.args:
            number = int(cmd.args[0])
            i = self._message(number)
            if i is not None:
                self.reply(r.UIDL_ONE.format(number=number, uidl=drop.uidls[i]))
            return None
        self._good()
        return self._listing(r.UIDL_FOLLOWS, drop.listing("uidl"))

    def _listing(self, head: Reply, body: bytes) -> Coroutine[Any, Any, None] | None:
        assert self._gate is not None
        if not self._gate.paused and len(body) <= LISTING_PIECE:
            self.write(head.encode() + body)  # the usual case: one write, no waiting
            return None
        self.reply(head)
        return send_listing(self.write, self._gate, body)

    def do_RETR(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        i = self._message(int(cmd.args[0]))
        if i is None:
            return None
        assert self.maildrop is not None and self._reader is not None and self._gate is not None
        if not self._gate.paused:
            data = self._reader.ready(i)
            if data is not None:
                # Read ahead and small: answer at once, in one write.
                enc = MessageEncoder()
                head = r.RETR_FOLLOWS.format(size=self.maildrop.entries[i].size).encode()
                self.write(head + enc.feed(data) + enc.close())
                self._retrieved(i, enc.octets)
                return None
        return self._send(i, None)

    def do_TOP(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        i = self._message(int(cmd.args[0]))
        return None if i is None else self._send(i, int(cmd.args[1]))

    async def _send(self, i: int, body_lines: int | None) -> None:
        drop = self.maildrop
        assert drop is not None and self._gate is not None and self._reader is not None
        entry = drop.entries[i]
        head = (r.RETR_FOLLOWS.format(size=entry.size) if body_lines is None
                else r.TOP_FOLLOWS)
        started = False

        def begin() -> None:
            nonlocal started
            started = True
            self.reply(head)

        try:
            octets = await send_message(
                self._reader, i, body_lines, begin, self.write, self._gate, self.resetTimeout
            )
        except MessageGone:
            self.reply(r.MESSAGE_GONE.format(number=i + 1))
            return
        except ConnectionGone:
            return
        except Exception as e:
            if started:
                raise MidResponse() from e
            raise
        if self.closed:
            return
        if body_lines is None:
            self._retrieved(i, octets)
        else:
            self.stats["top"] += 1
            self.stats["top_bytes"] += octets

    def _retrieved(self, i: int, octets: int) -> None:
        assert self.maildrop is not None
        self.maildrop.retrieved.add(i)
        self.stats["retr"] += 1
        self.stats["retr_bytes"] += octets

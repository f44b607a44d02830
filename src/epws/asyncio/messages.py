"""The inbound side of a Conn: unread messages, read back-pressure, the reader's wake-up.

One object owns every reason to stop reading from the socket, so that no code path can
turn back-pressure off behind another's back (issue 9: the server's hand-over of the
bytes behind the upgrade request used to resume reading unconditionally, and reading
then never paused again). Nothing else in epws calls the transport's
``pause_reading()`` / ``resume_reading()`` once a :class:`~epws.asyncio.conn.Conn` owns it.

Reading is paused while any of these holds, and resumed only when none does:

* ``FULL``: ``max_queue`` messages wait unread, or (callback mode) the protocol holds
  input the Conn stopped parsing under write pressure. The Conn asks the protocol for
  no more messages than the queue has room for (``receive_data(data,
  max_messages=room)``), so what is not parsed stays in the protocol as wire bytes,
  never inflated (issue 9 item 12), and the input it holds is at most what one read
  brought. ``FULL`` clears when the reader has taken the queue down to the low mark (a
  quarter of ``max_queue``) and the held input, parsed then, left the queue short of
  full: the protocol holds nothing any more. Held input must never sit behind a
  transport that reads on (the protocol would append every read to it), so input is
  held only while reading is paused, and never in closing mode.
* ``WRITING``: the transport's write buffer is over its high-water mark and no task of
  ours waits for it to drain, in every mode. Input can cost output (a pong per ping, an
  echo per message in callback mode); a peer that sends and never reads would otherwise
  grow our write buffer without bound. A task waiting to write means the application is
  already pushed back; reading on then is what lets the peer drain *its* side, so two
  epws peers writing to each other both ways never deadlock (the Conn sends only the
  latest pong meanwhile, RFC 6455 §5.5.3).
* ``HANDOVER``: the server's opening-handshake protocol paused the transport while it
  answered the request; the bytes it read past the request come in through
  :meth:`Inbound.hand_over`, and only then may reading resume.
* ``YIELD``: one read brought more than ``YIELD_EVENTS`` events (a flood of pings or
  pongs, which cost no queue room, or a burst of messages in callback mode): reading
  stops until the loop's next iteration, so every other connection is served between
  two reads of this one (issue 9, "no peer blocks another": uvloop goes on reading one
  readable socket, up to 32 reads per wake-up, and a witness connection waited for
  its echo as long as a ping flood lasted). Normal traffic pays one length check per
  read; what the flooder sends meanwhile waits in the kernel's socket buffer, not here.

Closing mode (our close frame sent, the peer's close frame received, the protocol
failed): reading never pauses again, because it must go on to see the peer's close
frame or EOF, and input costs nothing any more (the protocol answers no ping and keeps
no message after our close frame, and parses nothing after the peer's). Once TCP is
gone the transport is not touched at all.

Memory: one small object per connection; the deque is made on the first message, since
most of a server's connections are idle most of the time. It holds no reference to its
connection (the Conn passes itself to the calls that need it): a back-reference made
every finished connection a reference cycle, freed only by the cyclic garbage collector
(a pass every few hundred connections under churn, 8 % of a handshake benchmark's
profile) rather than by reference counting the moment it was dropped.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

from ..exceptions import ConcurrencyError
from ..protocol import Close, Failure

if TYPE_CHECKING:
    from .base import _ConnBase

__all__ = ["FULL", "HANDOVER", "WRITING", "YIELD", "YIELD_EVENTS", "Inbound"]

FULL = 1
WRITING = 2
HANDOVER = 4
YIELD = 8

#: Events (messages and control frames) one read may bring before reading pauses for
#: one loop iteration: far above what a read of ordinary traffic brings in recv mode
#: (``max_queue`` messages at most, and a control frame now and then).
YIELD_EVENTS = 64

_OPEN = 0
_CLOSING = 1
_LOST = 2

Item = str | bytes | Close | Failure


class Inbound:
    """The queue of unread messages of one :class:`~epws.asyncio.conn.Conn`."""

    __slots__ = (
        "_events",
        "_high",
        "_paused",
        "_reader",
        "_state",
        "held",
        "timed_out",
    )

    def __init__(self, max_queue: int) -> None:
        self._events: collections.deque[Item] | tuple[()] = ()
        self._high = max_queue if max_queue > 0 else 1
        self._paused = 0  # the reasons reading is paused, a bit each
        self._reader: asyncio.Future[None] | None = None
        self._state = _OPEN
        # The protocol may hold input parsed no further for lack of room: the next
        # message taken at the low mark (or the end of write pressure, in callback mode)
        # has it parsed. Kept after TCP is gone, so nothing received is lost.
        self.held = False
        # The read deadline passed: this read and every later one fail (gorilla's rule).
        self.timed_out = False

    def __len__(self) -> int:
        return len(self._events)

    @property
    def paused(self) -> int:
        """The reasons reading is paused (``FULL | WRITING | HANDOVER | YIELD``), 0 when reading."""
        return self._paused

    # ------------------------------------------------------------ the writer side

    def queue(self) -> collections.deque[Item]:
        """The deque the Conn appends a chunk's messages to; :meth:`filled` follows."""
        events = self._events
        if type(events) is tuple:
            events = self._events = collections.deque()
        return events  # type: ignore[return-value]

    @property
    def high(self) -> int:
        """``max_queue``: the most messages the queue takes, and callback mode's batch."""
        return self._high

    def room(self) -> int | None:
        """How many more messages the protocol may hand over now; None: no bound.

        In closing mode nothing needs a bound: after our close frame the protocol
        drops data messages, after the peer's (or a failure) it parses nothing.
        """
        if self._state:
            return None
        room = self._high - len(self._events)
        return room if room > 0 else 0

    def filled(self, conn: _ConnBase) -> None:
        """A chunk's messages are in: wake the reader, and stop reading once full.

        Full means the protocol was given no more room: it may hold input, which
        :meth:`next` has parsed once the reader has made room.
        """
        events = self._events
        if events:
            reader = self._reader
            if reader is not None and not reader.done():
                reader.set_result(None)
            if len(events) >= self._high:
                self.hold(conn)

    def hold(self, conn: _ConnBase) -> None:
        """The protocol may hold input: stop reading until it is parsed."""
        self.held = True
        self.pause(conn, FULL)

    def pause(self, conn: _ConnBase, reason: int) -> None:
        paused = self._paused
        if not paused:
            if self._state:
                return  # closing: read on to the peer's close frame or EOF
            conn.transport.pause_reading()
        self._paused = paused | reason

    def resume(self, conn: _ConnBase, reason: int) -> None:
        paused = self._paused
        if paused & reason:
            paused &= ~reason
            self._paused = paused
            if not paused:
                conn.transport.resume_reading()

    def yield_once(self, conn: _ConnBase) -> None:
        """Pause reading until the loop's next iteration (``YIELD``); a no-op in
        closing mode or if already yielding, like every other reason."""
        if self._paused & YIELD or self._state:
            return
        self.pause(conn, YIELD)
        conn.loop.call_soon(self.resume, conn, YIELD)

    def hand_over(self, conn: _ConnBase, rest: bytes) -> None:
        """Take over a transport whose reading the opening handshake paused.

        ``rest`` (what was read past the request) is parsed first, under every rule
        above; reading resumes only if nothing else holds it paused.
        """
        self._paused |= HANDOVER
        if rest:
            conn.data_received(rest)
        self.resume(conn, HANDOVER)

    def close(self, conn: _ConnBase) -> None:
        """Enter closing mode: never pause again, and resume reading if paused."""
        if self._state:
            return
        self._state = _CLOSING
        if self._paused:
            self._paused = 0
            conn.transport.resume_reading()

    def lost(self) -> None:
        """TCP is gone: leave the transport alone and wake the reader."""
        self._state = _LOST
        self._paused = 0
        self.wake()

    # ------------------------------------------------------------ the reader side

    def next(self, conn: _ConnBase) -> Item | None:
        """The next message, taken off the queue; a Close/Failure is left in place.

        Taking the queue down to the low mark lets the protocol parse the input it
        held back (see :meth:`~epws.asyncio.conn.Conn._parse_held`), which resumes
        reading if nothing is held any more.
        """
        events = self._events
        if not events:
            return None
        item = events[0]
        kind = type(item)
        if kind is str or kind is bytes:
            events.popleft()
            if self.held and len(events) <= self._high >> 2:
                conn._parse_held()
        return item

    def take(self) -> list[Item]:
        """Everything queued, taken off at once (the Conn switched to callback mode)."""
        events = self._events
        items = list(events)
        self._events = ()
        return items

    async def wait(self, conn: _ConnBase, until: asyncio.Future[None] | None = None) -> None:
        """Wait for a message, the end, or ``until`` to be done; one reader at a time."""
        if self._reader is not None:
            raise ConcurrencyError("another task is already reading from this connection")
        reader = self._reader = conn.loop.create_future()
        try:
            if until is not None:
                until.add_done_callback(lambda _: _wake(reader))
            await reader
        finally:
            self._reader = None

    def wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def time_out(self) -> None:
        """The read deadline passed: fail the waiting read and every later one."""
        self.timed_out = True
        self.wake()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

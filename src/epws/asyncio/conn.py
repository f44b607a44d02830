"""Conn: one WebSocket connection on asyncio, built on :class:`asyncio.Protocol`.

Concurrency contract (see docs/concurrency.md):

* **one reader at a time**: a second task calling :meth:`Conn.read_message` /
  :meth:`Conn.recv` while one is waiting gets :class:`~epws.ConcurrencyError`;
* **any number of writers for whole messages**: a message is handed to the transport
  in one synchronous call, so frames never interleave; writers wait only when the
  transport's buffer is over the high-water mark;
* a fragmented message opened with :meth:`Conn.message_writer` owns the wire until it
  ends; every other data write meanwhile (from any task, prepared messages and
  :func:`broadcast` included) raises :class:`~epws.ConcurrencyError`;
* :meth:`Conn.close`, :meth:`Conn.ping` and the deadline setters may be called from
  any task at any time.

Control frames are handled as they arrive, in the protocol callback, so pongs go out
and pong handlers run even while nobody reads. The peer's close frame and protocol
failures are acted on in order: messages that arrived before them are delivered
first, and the close reply (or the failing close frame) is sent when the reader gets
past them, at once if nothing is waiting to be read, and at the latest after
``close_timeout`` seconds whatever the application does.

Conn is one class assembled from parts, a module each (base.py says why base classes
rather than helper objects): this module has the class, its properties, the
transport's callbacks and the read path (``data_received`` to :meth:`Conn.recv` or
:attr:`Conn.on_message`); writing.py writes (:class:`MessageWriter`,
:func:`broadcast`, corking, flow control); closing.py runs the closing handshake, which
starts in one place (``_start_close``) and drops TCP in one place (:meth:`Conn.abort`);
pings.py has pings, the keepalive and the read deadline; base.py the state. The inbound
queue and every reason to pause reading belong to
:class:`~epws.asyncio.messages.Inbound`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..exceptions import ConnectionClosedOK, InvalidState
from ..protocol import Ping, Pong, Side
from ..protocol.frames import MessageType
from .closing import _ConnClosing, _fresh
from .keepalive import KEEPALIVE_PAYLOAD
from .messages import FULL, WRITING, YIELD_EVENTS
from .pings import _ConnPings
from .writing import MessageWriter, _ConnWriting, broadcast

__all__ = ["KEEPALIVE_PAYLOAD", "Conn", "MessageType", "MessageWriter", "broadcast"]

logger = logging.getLogger("epws")


def _drop(message: str | bytes) -> None:
    """Stands in for a failed ``on_message`` for the rest of the chunk."""


class Conn(_ConnWriting, _ConnClosing, _ConnPings):
    """A WebSocket connection: read and write messages, ping, close.

    Made by :func:`~epws.serve` (handed to your handler) or :func:`~epws.connect`;
    not constructed directly.

    Attributes:
        request: the HTTP request of the opening handshake (server side).
        response: the HTTP response of the opening handshake (client side).
        subprotocol: the negotiated subprotocol, or None.
        close_timeout: seconds :meth:`close` waits for the peer's close frame and TCP
            close, and at most how long a peer's close frame waits behind unread messages.
        pong_handler: called with each pong's payload (gorilla's SetPongHandler),
            the keepalive's pongs included.
        ping_handler: called with each ping's payload; the pong is sent regardless.
        on_close: called once with the :class:`~epws.ConnectionClosed` that describes
            the end, when TCP is gone (how callback mode learns that a connection ended).

    Keepalive (``ping_interval``, ``ping_timeout``, ``ping_payload``; see
    docs/keepalive.md): a ping of ``ping_payload`` every ``ping_interval`` seconds, one
    at a time; no pong (of any payload) within ``ping_timeout`` seconds fails the
    connection with 1011 and drops TCP, whether or not the application reads. It costs
    no timer and no task: the connection's next keepalive event and its read deadline
    share its one entry in the loop's deadline queue (deadlines.py), and the settings
    are one ``Keepalive`` (epws.asyncio.keepalive) shared by every connection that
    has the same (keepalive.py).
    """

    __slots__ = ()  # all in _ConnBase (base.py)

    # ------------------------------------------------------------ properties

    @property
    def on_message(self) -> Callable[[str | bytes], object] | None:
        """The callback mode's message handler; once set, every message goes to it, in order.

        Messages that were already queued (a client's that arrived before
        :func:`~epws.connect` returned, say) are handed to it at once, from the
        assignment itself and in order, before any message that comes later; set
        :attr:`~epws.Conn.on_close` first if the callback may close. None goes back to reading.
        Once TCP is gone and every message received has been handed on, it is reset
        to None (as :attr:`~epws.Conn.on_close` is after its call): a callback that
        refers to the connection must not keep it alive.
        """
        return self._on_message

    @on_message.setter
    def on_message(self, callback: Callable[[str | bytes], object] | None) -> None:
        self._on_message = callback
        if callback is not None:
            inbound = self._inbound
            if len(inbound) or inbound.held:
                self._deliver_queued(callback)

    def _deliver_queued(self, callback: Callable[[str | bytes], object]) -> None:
        """Callback mode began with messages queued: hand them on, then the held input."""
        inbound = self._inbound
        for ev in inbound.take():
            kind = type(ev)
            if kind is str or kind is bytes:
                if callback is _drop:
                    continue
                try:
                    callback(ev)  # type: ignore[arg-type]
                except Exception:
                    logger.exception("on_message callback failed")
                    callback = _drop
                    self.close_nowait(1011, "internal error")
                continue
            # The peer's close frame (or a failure) the reader would have reached.
            queued_close = self._queued_close
            if queued_close is not None:
                self._act_on(queued_close)
        if inbound.held:
            self._parse_held()  # in callback mode: pumps, then resumes reading
        else:
            inbound.resume(self, FULL)

    @property
    def side(self) -> Side:
        """Which end this is (``Side.SERVER`` or ``Side.CLIENT``)."""
        return self._protocol.side

    @property
    def read_limit(self) -> int:
        """The largest message accepted in bytes, 0 for no limit; larger ones close with 1009."""
        return self._protocol.max_size

    @read_limit.setter
    def read_limit(self, value: int | None) -> None:
        self._protocol.max_size = value or 0

    @property
    def closed(self) -> bool:
        """True once the TCP connection is closed."""
        return self._closed

    @property
    def remote_address(self) -> Any:
        """The peer's socket address, as the transport reports it."""
        return self.transport.get_extra_info("peername") if self.transport else None

    @property
    def local_address(self) -> Any:
        """This end's socket address."""
        return self.transport.get_extra_info("sockname") if self.transport else None

    # ------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self._write_limit)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        inbound = self._inbound
        if self._on_message is None:
            # The protocol completes no more messages than the queue has room for;
            # the rest stays in it as wire bytes, and the queue pauses reading.
            events = protocol.receive_data(data, inbound.room())
            callback = False
        else:
            # Callback mode: a batch of max_queue messages at a time, so a read of
            # compressed messages is never inflated whole before any is handed on.
            events = protocol.receive_data(data, inbound.high)
            callback = True
        out = protocol.data_to_send()
        if out:
            if self._write_paused:
                self._hold_pong(events)
            else:
                self._write(out)
        n = len(events)
        if n:
            self._dispatch(events)
        if callback and protocol.input_buffered:
            del events  # this batch is handed on: free it before the next one
            n += self._pump()
        if n > YIELD_EVENTS:
            # A flood (pings and pongs cost no queue room; callback mode hands every
            # message on at once): the other connections get their turn before this
            # one is read again (see messages.py, YIELD).
            inbound.yield_once(self)

    def _receive(self, room: int | None) -> int:
        """Parse input the protocol holds, up to ``room`` messages, and hand it on;
        return how many events that made."""
        protocol = self._protocol
        events = protocol.receive_data(b"", room)
        out = protocol.data_to_send()
        if out:
            if self._write_paused:
                self._hold_pong(events)
            else:
                self._write(out)
        if events:
            self._dispatch(events)
        return len(events)

    def _parse_held(self) -> None:
        """The queue made room (or closing began): parse input the protocol held back.

        Held pings, pongs, the peer's close frame or a failure come out in order with
        the messages and go through the same dispatch. Reading resumes only if this
        left the queue short of full, which means the protocol holds nothing more
        (it stops early only when the room is used up).
        """
        inbound = self._inbound
        inbound.held = False
        if self._on_message is not None:
            self._pump()
            return
        self._receive(inbound.room())
        if not inbound.held:
            inbound.resume(self, FULL)

    def _pump(self) -> int:
        """Callback mode: parse held input batch by batch until none is left; return
        how many events that made.

        Under write pressure (reading paused for it) parsing stops and the input stays
        held, since each message may cost output (an echo); :meth:`resume_writing`
        goes on from there. Only bytes of an unfinished frame are left at the end.
        """
        protocol = self._protocol
        inbound = self._inbound
        n = 0
        while protocol.input_buffered:
            if inbound.paused & WRITING:
                inbound.hold(self)
                return n
            before = protocol.input_buffered
            n += self._receive(inbound.high)
            if protocol.input_buffered == before:
                break  # an unfinished frame: it waits for more input
        inbound.resume(self, FULL)
        return n

    def _dispatch(self, events: list[Any]) -> None:
        """Hand a chunk's events on, in order: messages, control frames, the end."""
        inbound = self._inbound
        on_message = self._on_message
        queue = None
        for ev in events:
            kind = type(ev)
            if kind is str or kind is bytes:
                if on_message is not None:
                    try:
                        on_message(ev)
                    except Exception:
                        logger.exception("on_message callback failed")
                        # The rest of the chunk's messages go nowhere; its control
                        # frames and close frame are still handled.
                        on_message = _drop
                        self.close_nowait(1011, "internal error")
                    continue
                if queue is None:
                    queue = inbound.queue()
                queue.append(ev)
            elif kind is Ping:
                handler = self.ping_handler
                if handler is not None:
                    try:
                        handler(ev.payload)
                    except Exception:
                        logger.exception("ping_handler failed")
            elif kind is Pong:
                self._on_pong(ev.payload)
            else:
                self._peer_closing(ev)
        inbound.filled(self)

    def eof_received(self) -> bool | None:
        self._protocol.receive_eof()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._queued_close = None
        if self._error is None:
            self._error = self._closed_error(exc)
        err = self._error
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)
        registry = self._registry
        if registry is not None:
            self._registry = None
            registry.discard(self)
        self._user_deadline = self._ka_at = None
        if self._read_deadline is not None:
            self._arm_deadline()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._inbound.lost()
        waiters = self._drain_waiters
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_fresh(err))
                    waiter.exception()  # mark retrieved: a dropped writer is not a bug
            self._drain_waiters = None
        pings = self._pings
        if pings:
            for fut, _ in pings.values():
                if not fut.done():
                    fut.set_exception(_fresh(err))
                    fut.exception()
            self._pings = None
        on_close = self.on_close
        if on_close is not None:
            self.on_close = None
            try:
                on_close(err)
            except Exception:
                logger.exception("on_close callback failed")
        if self._on_message is not None and not self._inbound.held:
            # Nothing can reach it any more. Dropped like on_close, because the usual
            # callback (conn.send_nowait, or a closure over conn) makes the connection
            # a reference cycle that only the cyclic collector would free.
            self._on_message = None

    # ------------------------------------------------------------ reading

    async def read_message(self) -> tuple[MessageType, str | bytes]:
        """Wait for the next message: ``(MessageType.TEXT, str)`` or ``(BINARY, bytes)``.

        Raises:
            ConnectionClosed: the connection closed (cleanly: ConnectionClosedOK).
            TimeoutError: the read deadline passed; the connection is no longer usable.
            ConcurrencyError: another task is already reading.
        """
        data = await self.recv()
        return (MessageType.TEXT if type(data) is str else MessageType.BINARY), data

    async def recv(self) -> str | bytes:
        """Wait for the next message: ``str`` for text, ``bytes`` for binary."""
        if self._on_message is not None:
            raise InvalidState("messages are delivered to on_message, not read")
        inbound = self._inbound
        while True:
            if inbound.timed_out:
                raise TimeoutError("read deadline exceeded")
            ev = inbound.next(self)
            if ev is None:
                if self._error is not None:
                    raise self._closed_exc()
                await inbound.wait(self)
                continue
            kind = type(ev)
            if kind is str or kind is bytes:
                return ev  # type: ignore[return-value]
            # The peer's close frame or a failure: every message before it is read.
            queued_close = self._queued_close
            if queued_close is not None:
                self._act_on(queued_close)
            if self._error is None and not self._closed:
                # Close answered: wait for TCP to go, then report the close.
                await inbound.wait(self, self._lost_future())
            raise self._closed_exc()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        """Messages until the connection closes; a clean close ends the loop quietly."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

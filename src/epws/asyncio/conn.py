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

The inbound queue and every reason to pause reading belong to
:class:`~epws.asyncio.messages.Inbound`; this module starts a close in one place
(:meth:`Conn._start_close`) and drops TCP in one place (:meth:`Conn.abort`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from ..prepared import PreparedMessage
from ..protocol import Close, Failure, Ping, Pong, Protocol, Side
from ..protocol.frames import MessageType
from .deadlines import queue_for
from .keepalive import KEEPALIVE_PAYLOAD, keepalive_settings
from .messages import FULL, WRITING, YIELD_EVENTS, Inbound

if TYPE_CHECKING:
    from ..protocol.http11 import Request, Response

__all__ = ["KEEPALIVE_PAYLOAD", "Conn", "MessageType", "MessageWriter", "broadcast"]

logger = logging.getLogger("epws")


_OK_CODES = (1000, 1001, 1005)
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, drops the queue
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

#: Seconds: how early a due time may be acted on (as in deadlines.py: asyncio's timers
#: run up to about a millisecond early).
_EARLY = 0.001
#: "No keepalive ping sent yet": one shared float, so a new connection allocates none.
_NEVER = float("-inf")


def _drop(message: str | bytes) -> None:
    """Stands in for a failed ``on_message`` for the rest of the chunk."""


def _fresh(err: ConnectionClosed) -> ConnectionClosed:
    """A copy of ``err`` chained to it, for one raise.

    Raising one stored instance again and again makes its traceback grow with every
    raise (issue 9 item 10); each raise gets its own copy, whose ``__cause__`` is the
    stored one (and through it what broke the connection).
    """
    cls = type(err)
    new = cls.__new__(cls)
    new.__dict__.update(err.__dict__)
    new.args = err.args
    new.__cause__ = err
    new.__suppress_context__ = True
    return new


class Conn(asyncio.Protocol):
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

    __slots__ = (
        "_close_timer",
        "_closed",
        "_drain_waiters",
        "_error",
        "_inbound",
        "_ka",
        "_ka_at",
        "_ka_sent",
        "_ka_waiting",
        "_late_pong",
        "_latency",
        "_lost",
        "_on_message",
        "_pings",
        "_protocol",
        "_queued_close",
        "_read_deadline",
        "_registry",
        "_user_deadline",
        "_wpending",
        "_wpending_size",
        "_write_deadline",
        "_write_limit",
        "_write_paused",
        "_writer_task",
        "close_timeout",
        "loop",
        "on_close",
        "ping_handler",
        "pong_handler",
        "request",
        "response",
        "subprotocol",
        "transport",
    )

    def __init__(
        self,
        protocol: Protocol,
        *,
        max_queue: int = 16,
        write_limit: int = 64 * 1024,
        close_timeout: float = 10.0,
        subprotocol: str | None = None,
        request: Request | None = None,
        response: Response | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        ping_payload: bytes = KEEPALIVE_PAYLOAD,
    ) -> None:
        self._protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.subprotocol = subprotocol
        self.request = request
        self.response = response
        self.close_timeout = close_timeout
        self.ping_handler: Callable[[bytes], object] | None = None
        self.pong_handler: Callable[[bytes], object] | None = None
        self._on_message: Callable[[str | bytes], object] | None = None
        self.on_close: Callable[[ConnectionClosed], object] | None = None
        self._inbound = Inbound(self, max_queue)
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._writer_task: asyncio.Task[Any] | None = None
        # The ConnectionClosed readers and writers get (each a fresh copy of it).
        self._error: ConnectionClosed | None = None
        # The peer's Close (or a Failure) waiting in the queue behind unread messages.
        self._queued_close: Close | Failure | None = None
        # The payload of the latest ping not answered yet because the write buffer is
        # over the high-water mark (only the latest is answered, RFC 6455 §5.5.3).
        self._late_pong: bytes | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] | None = None
        # The connection's entry in deadlines.queue_for(loop): the earlier of the
        # application's read deadline and the next keepalive event.
        self._read_deadline: float | None = None
        self._user_deadline: float | None = None  # set_read_deadline's
        # Keepalive: its settings (None: off), shared with every connection that has
        # the same (keepalive.py, issue 9: no per-connection copy); when the next
        # keepalive event is due; when the last keepalive ping went out; whether its
        # pong is still awaited.
        ka = self._ka = keepalive_settings(ping_interval, ping_timeout, ping_payload)
        self._ka_at: float | None = None
        self._ka_sent = _NEVER
        self._ka_waiting = False
        self._latency: float | None = None
        self._write_deadline: float | None = None
        # One timer at a time: answer a queued_close close when due, or, once our close
        # frame is out, drop TCP if the peer has not finished the handshake.
        self._close_timer: asyncio.TimerHandle | None = None
        # Made when somebody first waits for TCP to go (close(), wait_closed()): an idle
        # connection that nobody waits on never pays for a Future.
        self._lost: asyncio.Future[None] | None = None
        # The server's set of open connections: the connection leaves it as TCP goes.
        self._registry: set[Conn] | None = None
        self._closed = False
        self._write_limit = write_limit
        # Corked writes: frames written during one loop iteration go out in one call.
        self._wpending: list[bytes] | None = None
        self._wpending_size = 0
        if ka is not None:
            # The handshake just proved the peer alive: the first ping is due after one
            # interval (_ka_sent stays _NEVER until then).
            self._ka_at = self.loop.time() + ka.interval
            self._arm_deadline()

    # ------------------------------------------------------------ properties

    @property
    def on_message(self) -> Callable[[str | bytes], object] | None:
        """The callback mode's message handler; once set, every message goes to it, in order.

        Messages that were already queued (a client's that arrived before
        :func:`~epws.connect` returned, say) are handed to it at once, from the
        assignment itself and in order, before any message that comes later; set
        :attr:`~epws.Conn.on_close` first if the callback may close. None goes back to reading.
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
            inbound.resume(FULL)

    @property
    def latency(self) -> float | None:
        """The round trip of the last keepalive ping in seconds, None before its first pong.

        Measured from our keepalive ping to its pong, so it includes the time the pong
        waited behind data in either direction (as the application sees it).
        """
        return self._latency

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
    def buffered_amount(self) -> int:
        """Bytes handed to the transport and not yet sent (like the browser API's)."""
        transport = self.transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + self._wpending_size

    @property
    def remote_address(self) -> Any:
        """The peer's socket address, as the transport reports it."""
        return self.transport.get_extra_info("peername") if self.transport else None

    @property
    def local_address(self) -> Any:
        """This end's socket address."""
        return self.transport.get_extra_info("sockname") if self.transport else None

    @property
    def close_code(self) -> int | None:
        """The close code received once closed; 1005 if the frame had none, 1006 if none came."""
        rcvd = self._protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return 1006 if self._closed else None

    # ------------------------------------------------------------ corking

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for the transport; everything queued in one loop iteration
        goes out in one write (one system call instead of one per frame).

        Once the queue and the transport's buffer together pass the write limit the
        queue is flushed at once, so the transport sees the pressure (and pauses
        writers) exactly as without corking, and memory stays within the limit plus
        one frame.
        """
        pending = self._wpending
        if pending is None:
            pending = self._wpending = []
            self.loop.call_soon(self._flush)
        pending.append(data)
        size = self._wpending_size + len(data)
        self._wpending_size = size
        if size + self.transport.get_write_buffer_size() >= self._write_limit:
            self._flush()

    def _flush(self) -> None:
        pending = self._wpending
        if pending is None:
            return
        self._wpending = None
        self._wpending_size = 0
        transport = self.transport
        if transport.is_closing():
            return
        if len(pending) == 1:
            transport.write(pending[0])
        else:
            transport.writelines(pending)

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
            inbound.yield_once()

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
            inbound.resume(FULL)

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
                inbound.hold()
                return n
            before = protocol.input_buffered
            n += self._receive(inbound.high)
            if protocol.input_buffered == before:
                break  # an unfinished frame: it waits for more input
        inbound.resume(FULL)
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
        inbound.filled()

    def _peer_closing(self, ev: Close | Failure) -> None:
        """The peer's close frame or a protocol failure: act now, or after the queue."""
        inbound = self._inbound
        if self._closed:
            # TCP went while the protocol still held input: the end is told after the
            # messages before it, as it would have been had they all been parsed.
            inbound.queue().append(ev)
            if type(ev) is Failure:
                self._error = self._closed_error(ev.error)
            else:
                err = self._error
                self._error = self._closed_error(err.__cause__ if err is not None else None)
            return
        if self._protocol.close_sent is not None:
            # Our close frame is out: this ends the handshake (or the peer broke it).
            self._finish_closing(failed=type(ev) is Failure)
            return
        # Nothing after it is parsed: read on, to see EOF.
        inbound.close()
        waiting = len(inbound)
        inbound.queue().append(ev)
        if not waiting:
            self._act_on(ev)
            return
        # Messages wait unread before it: the reader answers it when it gets there,
        # or the timer does, so the handshake ends whatever the application does.
        self._queued_close = ev
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(self.close_timeout, self._queued_close_due)

    def _queued_close_due(self) -> None:
        self._close_timer = None
        ev = self._queued_close
        if ev is not None:
            self._act_on(ev)

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

    def pause_writing(self) -> None:
        self._write_paused = True
        if not self._drain_waiters:
            # Nobody waits to write, so nothing slows the input that costs output
            # (pongs; echoes in callback mode): stop taking input (see messages.py).
            self._inbound.pause(WRITING)

    def resume_writing(self) -> None:
        self._write_paused = False
        inbound = self._inbound
        inbound.resume(WRITING)
        if inbound.held and self._on_message is not None:
            # Callback mode stopped parsing under the pressure: go on (reading stays
            # paused, FULL, until nothing is held).
            self._parse_held()
        payload = self._late_pong
        if payload is not None:
            self._late_pong = None
            if self._protocol.close_sent is None and not self._closed:
                self._write(self._protocol.send_pong(payload))
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _hold_pong(self, events: list[Any]) -> None:
        """Over the high-water mark: keep only the latest ping's pong, for later."""
        for ev in reversed(events):
            if type(ev) is Ping:
                self._late_pong = ev.payload
                return

    # ------------------------------------------------------------ closing

    def _closed_error(self, exc: BaseException | None = None) -> ConnectionClosed:
        protocol = self._protocol
        rcvd = protocol.close_rcvd
        sent = protocol.close_sent
        rcvd_code = rcvd.code if rcvd is not None else None
        ok = rcvd_code in _OK_CODES and not protocol.failed
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        err = cls(
            rcvd_code,
            rcvd.reason if rcvd is not None else "",
            sent[0] if sent is not None else None,
            sent[1] if sent is not None else "",
            cause=str(exc) if exc else "",
        )
        if exc is not None:
            err.__cause__ = exc
        return err

    def _closed_exc(self) -> ConnectionClosed:
        """What to raise to a reader or writer of a closed (or closing) connection.

        Always a fresh instance: the stored error's copy once TCP is gone, else one
        describing the close frames so far.
        """
        err = self._error
        if err is None:
            if not self._closed:
                return self._closed_error()
            err = self._error = self._closed_error()
        return _fresh(err)

    def _act_on(self, ev: Close | Failure) -> None:
        """Answer the peer's close frame (echo its code) or fail the connection."""
        protocol = self._protocol
        if type(ev) is Close:
            self._start_close(protocol.close_reply())
        else:
            error = ev.error  # type: ignore[union-attr]
            frame = protocol.fail(error.code, str(error))
            self._error = self._closed_error(error)
            self._start_close(frame, failed=True)

    def _start_close(self, frame: bytes, *, failed: bool = False) -> None:
        """The one way a close starts: our close frame out, then end the handshake.

        Every close goes through here: :meth:`close_nowait`, a failed ``on_message``
        or ``message_writer``, the answer to the peer's close frame, a protocol failure.
        Reading goes on (to see the peer's close frame or EOF) and never pauses again;
        TCP goes at once if both close frames are out (or we failed), else within
        :attr:`close_timeout`.
        """
        if self._queued_close is not None:
            # A close that waited behind unread messages is answered by this one.
            self._queued_close = None
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
        inbound = self._inbound
        inbound.close()
        transport = self.transport
        if transport.is_closing():
            return
        if frame:
            self._write(frame)
        self._flush()
        if inbound.held and self._protocol.input_buffered:
            # Input held for room may hold the peer's close frame, and the peer may
            # send nothing more: parse it now (data messages after our close frame
            # cost nothing). Soon, not here: a dispatch may be running.
            self.loop.call_soon(self._parse_held)
        if failed or self._protocol.close_rcvd is not None:
            self._finish_closing(failed=failed)
        elif self._close_timer is None:
            self._close_timer = self.loop.call_later(self.close_timeout, self.abort)

    def _finish_closing(self, *, failed: bool) -> None:
        """Both close frames are out (or we failed): let TCP go, server side first."""
        transport = self.transport
        if transport.is_closing():
            return
        self._flush()
        if self.side is Side.SERVER and not failed:
            transport.close()
            return
        # A client waits for the server to close TCP (RFC 6455 §7.1.1). A failing side
        # half-closes so the peer gets our close frame and EOF rather than a reset.
        if failed and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                # The peer reset TCP between our close frame and the half-close
                # (asyncio's write_eof shuts the socket down at once): it is gone.
                self.abort()
                return
        elif failed:
            transport.close()
            return
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(self.close_timeout, self.abort)

    async def close(self, code: int | None = 1000, reason: str = "") -> None:
        """Run the closing handshake: send a close frame, wait for the peer's, close TCP.

        ``code=None`` sends a close frame with no payload (the peer reports 1005), as
        gorilla's chat does when it evicts a client. Waits at most
        :attr:`close_timeout` seconds, then drops the connection. Safe to call from any
        task, more than once, and after the connection is gone.
        """
        if self._closed:
            return
        self.close_nowait(code, reason)
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.shield(self._lost_future())
        except TimeoutError:
            self.abort()
            await asyncio.shield(self._lost_future())

    def close_nowait(self, code: int | None = 1000, reason: str = "") -> None:
        """Start the closing handshake without waiting for it (safe in callbacks).

        The close frame goes out now; the connection is dropped if the peer has not
        completed the handshake within :attr:`close_timeout` seconds. If the peer's
        close frame already waits behind unread messages, it is answered now.
        """
        if self._closed or self.transport.is_closing():
            return
        queued_close = self._queued_close
        if queued_close is not None:
            self._act_on(queued_close)
            return
        self._start_close(self._protocol.send_close(code, reason))

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake.

        On TCP this is a reset (SO_LINGER 0): the kernel frees the send queue at once
        instead of keeping it in FIN-WAIT-1 for a peer that never reads.
        """
        transport = self.transport
        if transport is None:
            return
        if not self._closed:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in _TCP_FAMILIES:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self._lost_future())

    def _lost_future(self) -> asyncio.Future[None]:
        """The Future done once TCP is gone (already done if it is)."""
        lost = self._lost
        if lost is None:
            lost = self._lost = self.loop.create_future()
            if self._closed:
                lost.set_result(None)
        return lost

    async def __aenter__(self) -> Conn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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
            ev = inbound.next()
            if ev is None:
                if self._error is not None:
                    raise self._closed_exc()
                await inbound.wait()
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
                await inbound.wait(self._lost_future())
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

    def set_read_deadline(self, when: float | None) -> None:
        """Fail reads once the loop clock passes ``when`` (``loop.time()`` based); None clears.

        As in gorilla, a read that times out leaves the connection unusable for reading:
        this read and every later one raise :class:`TimeoutError`; writing and closing
        still work. The chat's pong handler pushes the deadline forward on every pong.
        In callback mode (with :attr:`~epws.Conn.on_message` set) there is no read to fail, so the
        connection is dropped and :attr:`~epws.Conn.on_close` learns why.
        """
        if self._closed:
            when = None
        self._user_deadline = when
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        """Keep the queue entry at the earlier of the read deadline and the keepalive's."""
        user = self._user_deadline
        ka = self._ka_at
        when = user if ka is None or (user is not None and user < ka) else ka
        old = self._read_deadline
        if when == old:
            return
        self._read_deadline = when
        queue_for(self.loop).changed(self.loop, self, old, when)

    def _read_timed_out(self) -> None:
        """The queue entry is due (called by the loop's deadline queue, which cleared
        it): the read deadline passed, or a keepalive event is due, or both."""
        due = self.loop.time() + _EARLY
        user = self._user_deadline
        if user is not None and user <= due:
            self._user_deadline = None
            self._user_timed_out()
        ka = self._ka_at
        if ka is not None and ka <= due:
            self._keepalive_due(due)
        if not self._closed:
            self._arm_deadline()

    def _user_timed_out(self) -> None:
        if self._on_message is not None:
            if self._error is None:
                self._error = self._closed_error(TimeoutError("read deadline exceeded"))
            self.abort()
            return
        self._inbound.time_out()

    # ------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        """Whole data messages: the connection must be open and no fragmented one open."""
        if self._closed or self._protocol.close_sent is not None:
            raise self._closed_exc()
        if self._writer_task is not None:
            raise ConcurrencyError(
                "a fragmented message is being written (message_writer is open): "
                "no other data message may be sent until it ends"
            )

    async def send(
        self, data: str | bytes | bytearray | memoryview, *, compress: bool = True
    ) -> None:
        """Send one message: text for ``str``, binary for bytes-like.

        Returns once the frame is handed to the transport, waiting first only if the
        transport's buffer is over the high-water mark (flow control).
        ``compress=False`` skips permessage-deflate for this message.
        """
        self.send_nowait(data, compress=compress)
        if self._write_paused:
            await self._drain()

    def send_nowait(
        self, data: str | bytes | bytearray | memoryview, *, compress: bool = True
    ) -> None:
        """Send one message without waiting for buffer space: the callback mode's send.

        The frame is queued at once (frames of one loop iteration leave in one write).
        Nothing bounds the buffer here but the caller: watch :attr:`buffered_amount`.
        The connection helps: while its write buffer is over the high-water mark it
        stops reading, so an echo-style handler cannot be made to buffer without bound
        by a peer that sends and never reads.
        """
        self._check_writable()
        protocol = self._protocol
        if type(data) is str:
            frame = protocol.send_text(data, compress=compress)
        else:
            frame = protocol.send_binary(data, compress=compress)  # type: ignore[arg-type]
        self._write(frame)

    async def write_message(
        self, message_type: MessageType, data: str | bytes, *, compress: bool = True
    ) -> None:
        """gorilla's WriteMessage: send ``data`` as a message of ``message_type``."""
        payload = data.encode() if isinstance(data, str) else data
        self._check_writable()
        self._write(self._protocol.send_message(message_type, payload, compress=compress))
        if self._write_paused:
            await self._drain()

    async def write_prepared(self, message: PreparedMessage) -> None:
        """Write a message encoded once for many connections (see :class:`PreparedMessage`)."""
        self.write_prepared_nowait(message)
        if self._write_paused:
            await self._drain()

    def write_prepared_nowait(self, message: PreparedMessage) -> None:
        """Hand a prepared message to the transport without waiting for buffer space.

        For fan-out: the caller watches :attr:`buffered_amount` to find slow readers
        instead of awaiting each of them. With nothing corked on this connection the
        frame goes straight to the transport: a broadcast writes each connection once
        per batch, so corking could only add a callback per recipient.
        """
        self._check_writable()
        frame = message.frame_for(self._protocol)
        if self._wpending is None:
            self.transport.write(frame)
        else:
            self._write(frame)

    async def _drain(self) -> None:
        """Wait until the transport's buffer is under its low-water mark again."""
        if self._closed:
            raise self._closed_exc()
        waiter = self.loop.create_future()
        waiters = self._drain_waiters
        if waiters is None:
            waiters = self._drain_waiters = []
            # A task now waits to write: reading goes on (see messages.py, WRITING).
            self._inbound.resume(WRITING)
        waiters.append(waiter)
        deadline = self._write_deadline
        if deadline is None:
            await waiter
            return
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            # The frame is half-sent at best: the connection can't be used any more.
            if self._error is None:
                self._error = self._closed_error(TimeoutError("write deadline exceeded"))
            self.abort()
            raise TimeoutError("write deadline exceeded") from None

    def set_write_deadline(self, when: float | None) -> None:
        """Writes waiting for buffer space fail with TimeoutError after ``when`` (loop time).

        A timed-out write drops the connection, as its frame may be half-sent; later
        writes raise :class:`~epws.ConnectionClosed`.
        """
        self._write_deadline = when

    @contextlib.asynccontextmanager
    async def message_writer(self, message_type: MessageType) -> AsyncIterator[MessageWriter]:
        """Write one message in several frames (gorilla's NextWriter), without holding it.

        ::

            async with conn.message_writer(MessageType.BINARY) as w:
                async for chunk in source:
                    await w.write(chunk)

        While the block runs, no other data message may go out on this connection
        (:class:`~epws.ConcurrencyError`); pings, pongs and close may, as control frames
        can come between fragments. If the block raises after a frame went out, the
        message can never be completed honestly (finishing it would deliver a truncated
        message as if whole), so the connection is closed with 1011; if nothing went
        out yet, it stays usable.
        """
        self._check_writable()
        self._writer_task = asyncio.current_task()
        writer = MessageWriter(self, message_type)
        try:
            yield writer
        except BaseException:
            if writer._started and self._protocol.close_sent is None and not self._closed:
                self._start_close(self._protocol.send_close(1011, "message writer failed"))
            raise
        else:
            await writer._finish()
        finally:
            self._writer_task = None

    async def _write_fragment(self, opcode: int, data: bytes, fin: bool) -> None:
        if self._closed or self._protocol.close_sent is not None:
            raise self._closed_exc()
        try:
            frame = self._protocol.send_fragment(opcode, data, fin=fin)
        except InvalidState as exc:
            raise ConcurrencyError(str(exc)) from None
        self._write(frame)
        if self._write_paused:
            await self._drain()

    # ------------------------------------------------------------ ping / pong

    def _check_open(self) -> None:
        if self._closed or self._protocol.close_sent is not None:
            raise self._closed_exc()

    async def ping(self, data: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; the returned future gives the round-trip time when its pong arrives.

        ``data`` is the payload (at most 125 bytes), which the pong echoes; ``b""``
        sends an empty ping, as gorilla's chat does. ``None`` (the default) makes a
        unique 4-byte payload, so that concurrent pings can't be confused.
        """
        self._check_open()
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if data is None:
            data = os.urandom(4)
            while data in pings:
                data = os.urandom(4)
        frame = self._protocol.send_ping(data)  # validates the size before registering
        waiting = pings.get(data)
        if waiting is not None:
            # The same payload is still waiting for its pong (a keepalive that is late):
            # the pong can't tell the two apart, so both share the first one's future.
            self._write(frame)
            return waiting[0]
        fut: asyncio.Future[float] = self.loop.create_future()
        pings[data] = (fut, self.loop.time())
        self._write(frame)
        return fut

    async def pong(self, data: bytes = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat, RFC 6455 §5.5.3)."""
        self._check_open()
        self._write(self._protocol.send_pong(data))

    def _keepalive_due(self, due: float) -> None:
        """The keepalive's event: send the next ping, or fail a peer that never answered.

        One keepalive ping at a time: while one waits for its pong no other is sent, so
        pings never pile up behind data when the peer reads slowly.
        """
        ka = self._ka
        if ka is None or self._closed or self._protocol.close_sent is not None:
            # Closing: close_timeout bounds the rest.
            self._ka_at = None
            return
        interval = ka.interval
        timeout = ka.timeout
        sent = self._ka_sent
        if self._ka_waiting:
            if timeout is not None and sent + timeout <= due:
                self._ka_at = None
                self._keepalive_failed()
                return
            # No timeout (latency only), or the interval came first: wait on.
            self._ka_at = sent + timeout if timeout is not None else due + interval
            return
        if sent + interval > due:  # the pong came, the timeout passed: ping when due
            self._ka_at = sent + interval
            return
        now = self.loop.time()
        self._ka_sent = now
        self._ka_waiting = True
        self._ka_at = now + (timeout if timeout is not None else interval)
        self._write(self._protocol.send_ping(ka.payload))

    def _keepalive_failed(self) -> None:
        """No pong within ping_timeout: 1011, then drop TCP without waiting for the peer.

        The close frame goes out (it reaches a peer that is only slow); TCP then goes
        at once, gracefully if the frame left our buffer, else by a reset, since a peer
        that does not read would hold the buffer and the socket for ever.
        """
        frame = self._protocol.fail(1011, "keepalive ping timeout")
        self._error = self._closed_error(TimeoutError("keepalive ping timeout"))
        self._start_close(frame, failed=True)
        transport = self.transport
        if self._closed:
            return
        self._flush()
        if transport.get_write_buffer_size():
            self.abort()
        else:
            transport.close()

    def _on_pong(self, payload: bytes) -> None:
        if self._ka_waiting:
            # Any pong shows the peer alive: it may answer only the latest of several
            # pings (RFC 6455 §5.5.3). Only ours times the round trip.
            self._ka_waiting = False
            now = self.loop.time()
            sent = self._ka_sent
            ka = self._ka
            if ka is not None:
                if payload == ka.payload:
                    self._latency = now - sent
                at = self._ka_at
                if at is not None and sent + ka.interval < at:
                    self._ka_at = sent + ka.interval  # interval < timeout: ping sooner
                    self._arm_deadline()
        pings = self._pings
        if pings and payload in pings:
            # A pong acknowledges its ping and every earlier one (RFC 6455 §5.5.3).
            now = self.loop.time()
            for key in list(pings):
                fut, sent = pings.pop(key)
                if not fut.done():
                    fut.set_result(now - sent)
                if key == payload:
                    break
        handler = self.pong_handler
        if handler is not None:
            try:
                handler(payload)
            except Exception:
                logger.exception("pong_handler failed")


def broadcast(conns: Iterable[Conn], message: PreparedMessage | str | bytes) -> list[Conn]:
    """Write one message to many connections without waiting on any of them.

    The message is encoded once. Returns the connections that could not take it
    (closed or closing, timed out, a fragmented message open, any other error), so the
    caller can drop them; one bad connection never stops the others from getting it.
    Slow readers are the caller's policy: watch :attr:`Conn.buffered_amount`.
    """
    if not isinstance(message, PreparedMessage):
        kind = MessageType.TEXT if isinstance(message, str) else MessageType.BINARY
        message = PreparedMessage(kind, message)
    failed: list[Conn] = []
    for conn in conns:
        try:
            conn.write_prepared_nowait(message)
        except Exception:
            failed.append(conn)
    return failed


class MessageWriter:
    """Writes the frames of one fragmented message; made by :meth:`Conn.message_writer`."""

    __slots__ = ("_conn", "_opcode", "_pending", "_started")

    def __init__(self, conn: Conn, message_type: MessageType) -> None:
        self._conn = conn
        self._opcode = int(message_type)
        self._pending: bytes | None = None
        self._started = False

    async def write(self, data: str | bytes | bytearray | memoryview) -> None:
        """Add ``data`` to the message.

        The previous piece is sent as a non-final frame now, so that the last piece can
        carry FIN without an empty trailing frame.
        """
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        pending = self._pending
        self._pending = chunk
        if pending is not None:
            await self._send(pending, fin=False)

    async def _send(self, chunk: bytes, *, fin: bool) -> None:
        opcode = 0 if self._started else self._opcode
        self._started = True
        await self._conn._write_fragment(opcode, chunk, fin)

    async def _finish(self) -> None:
        await self._send(self._pending or b"", fin=True)
        self._pending = None

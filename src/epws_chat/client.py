"""The Client: one WebSocket connection between a browser and the hub.

As in the Go original, each connection has exactly one reader (:meth:`Client.read_pump`)
and one writer (:meth:`Client.write_pump`), which is what a WebSocket connection
supports, and a bounded send buffer between the hub and the writer.

The send buffer is a deque plus one future: the hub appends without ever waiting
(:meth:`Client.enqueue`) and wakes the write pump only when it is asleep, so a burst of
messages costs one wake-up, not one per message. The write pump then takes everything
pending at that moment and sends it as ONE text message joined with ``"\\n"``
(coalescing), which saves system calls and frames under load.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import epws

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Client", "Settings", "normalize", "serve_ws"]

logger = logging.getLogger("epws_chat.client")

# What Go's bytes.TrimSpace trims (unicode.IsSpace). Python's str.strip() would also
# trim the separators U+001C..U+001F, which Go keeps; spelling the set out keeps the
# exact behaviour of the original.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def normalize(message: str) -> str:
    """Newlines become spaces, then surrounding white space goes (the read pump's rule).

    This is what makes ``"\\n"`` safe as the coalescing separator: no user line can
    contain one. An all-white-space message becomes ``""`` and is still broadcast.
    """
    return message.replace("\n", " ").strip(_GO_SPACE)


@dataclass(frozen=True, slots=True)
class Settings:
    """The constants of the Go original, adjustable (tests shorten the timers).

    Attributes:
        send_buffer: messages a client's send buffer holds; when full the client is
            evicted (Go: the ``send`` channel's capacity, 256).
        read_limit: largest message accepted, in bytes; a larger one closes the
            connection with 1009 (Go: ``maxMessageSize``, 512).
        pong_wait: seconds the read deadline lies ahead; only a pong pushes it
            forward (Go: ``pongWait``, 60 s).
        ping_period: seconds between pings; must be shorter than ``pong_wait`` so
            the pong can arrive in time (Go: ``pingPeriod`` = pongWait * 9/10, 54 s).
        write_wait: seconds each write (message batch, ping, close frame) may take
            (Go: ``writeWait``, 10 s).
    """

    send_buffer: int = 256
    read_limit: int = 512
    pong_wait: float = 60.0
    ping_period: float = 54.0
    write_wait: float = 10.0

    def __post_init__(self) -> None:
        if self.send_buffer < 1:
            raise ValueError("send_buffer must be at least 1")
        if self.read_limit < 1:
            raise ValueError("read_limit must be at least 1")
        if not 0 < self.ping_period < self.pong_wait:
            raise ValueError("ping_period must be positive and shorter than pong_wait")
        if self.write_wait <= 0:
            raise ValueError("write_wait must be positive")


class Client:
    """A connection's send buffer and its two pumps.

    Attributes:
        hub: the hub this client is registered with.
        conn: the WebSocket connection.
        settings: the constants in force.
        close_error: why the read pump stopped (a ConnectionClosed or TimeoutError),
            once it has.
    """

    __slots__ = (
        "_blocked",
        "_capacity",
        "_pending",
        "_ping_due",
        "_send_closed",
        "_waiter",
        "close_error",
        "conn",
        "hub",
        "name",
        "settings",
    )

    def __init__(self, hub: Hub, conn: epws.Conn, settings: Settings | None = None) -> None:
        self.hub = hub
        self.conn = conn
        self.settings = settings = settings or Settings()
        self._capacity = settings.send_buffer
        self._pending: collections.deque[str] = collections.deque()
        self._send_closed = False
        self._blocked = False
        self._ping_due = False
        self._waiter: asyncio.Future[None] | None = None
        self.close_error: BaseException | None = None
        address = conn.remote_address
        if isinstance(address, tuple) and len(address) >= 2:
            host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
            self.name = f"{host}:{address[1]}"
        else:
            self.name = str(address)

    def __repr__(self) -> str:
        return f"<Client {self.name}>"

    def __str__(self) -> str:
        return f"client {self.name}"

    # ------------------------------------------------------- the send buffer

    @property
    def pending(self) -> int:
        """Messages queued and not yet taken by the write pump."""
        return len(self._pending)

    @property
    def send_closed(self) -> bool:
        """True once the hub closed the send buffer (unregistered or evicted)."""
        return self._send_closed

    def enqueue(self, message: str) -> bool:
        """Queue ``message`` without waiting; False if the client must be evicted.

        Called by the hub only. False means the buffer is full while the write pump
        is stuck in a write the peer does not take (or the buffer is closed).

        A full buffer whose write pump is merely waiting for its turn on the loop is
        not a stuck client: in Go the write pump drains in parallel with the hub,
        while here one read pump can broadcast hundreds of messages that arrived in
        one TCP segment before any other task runs. Then the pump's work is done
        right here: the queued messages go to the transport as one message, without
        waiting, and the new message starts the next batch.
        """
        pending = self._pending
        if self._send_closed:
            return False
        if len(pending) >= self._capacity and (self._blocked or not self._flush_now()):
            return False
        pending.append(message)
        if self._waiter is not None:
            self._wake()
        return True

    def _flush_now(self) -> bool:
        """Hand everything queued to the transport at once; False if the conn is closing."""
        pending = self._pending
        batch = "\n".join(pending)
        pending.clear()
        try:
            self.conn.write_prepared_nowait(epws.PreparedMessage(epws.MessageType.TEXT, batch))
        except (epws.ConnectionClosed, epws.InvalidState):
            return False
        return True

    def close_send(self) -> None:
        """Close the send buffer: the write pump sends what is queued, then an empty close."""
        if not self._send_closed:
            self._send_closed = True
            self._wake()

    def _tick(self) -> None:
        self._ping_due = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------- the pumps

    async def read_pump(self) -> None:
        """Hand each message from the connection to the hub, until it fails or closes.

        The only reader of the connection. Messages over ``read_limit`` make the
        library close with 1009; the read deadline lies ``pong_wait`` ahead and only
        pongs move it, so a peer that stops answering pings is dropped even if it
        keeps sending messages. On the way out the client unregisters, which ends
        the write pump.
        """
        conn = self.conn
        loop = asyncio.get_running_loop()
        pong_wait = self.settings.pong_wait
        conn.read_limit = self.settings.read_limit
        conn.set_read_deadline(loop.time() + pong_wait)
        conn.pong_handler = _deadline_pusher(conn, loop, pong_wait)
        broadcast = self.hub.broadcast
        try:
            while True:
                message = await conn.recv()
                if not isinstance(message, str):
                    # Go broadcasts the bytes of binary messages as text; decoding
                    # keeps the outgoing text frame valid UTF-8.
                    message = message.decode("utf-8", "replace")
                broadcast(normalize(message))
        except epws.ConnectionClosed as exc:
            self.close_error = exc
            # As Go's IsUnexpectedCloseError(err, GoingAway, AbnormalClosure): a close
            # frame the peer sent with any code but 1001 is worth a line. A close that
            # answers our own (eviction) is not the peer's doing.
            if not self._send_closed and epws.is_unexpected_close(exc, 1001, 1006):
                level = logging.INFO if exc.code == 1000 else logging.WARNING
                logger.log(level, "%s closed the connection: %s", self, exc)
        except TimeoutError as exc:
            self.close_error = exc
            logger.debug("%s: no pong within %.3g s", self, pong_wait)
        finally:
            self.hub.unregister(self)

    async def write_pump(self) -> None:
        """Send queued messages (coalesced) and pings, until the send buffer closes.

        The only writer of the connection. Every write gets a ``write_wait`` deadline:
        a peer that does not read makes the library drop the connection then. When
        the hub closes the send buffer, whatever is still queued goes out, then a
        close frame with an empty payload, as the Go original does.
        """
        conn = self.conn
        loop = asyncio.get_running_loop()
        settings = self.settings
        write_wait = settings.write_wait
        pending = self._pending
        ticker = _Ticker(loop, settings.ping_period, self._tick)
        try:
            while True:
                if not pending and not self._send_closed and not self._ping_due:
                    waiter = self._waiter = loop.create_future()
                    await waiter
                if pending:
                    # Snapshot: everything queued right now becomes one message.
                    batch = pending[0] if len(pending) == 1 else "\n".join(pending)
                    pending.clear()
                    conn.set_write_deadline(loop.time() + write_wait)
                    self._blocked = True  # only observable while send() waits to drain
                    try:
                        await conn.send(batch)
                    finally:
                        self._blocked = False
                elif self._send_closed:
                    conn.set_write_deadline(loop.time() + write_wait)
                    await conn.close(None)
                    return
                if self._ping_due:
                    self._ping_due = False
                    conn.set_write_deadline(loop.time() + write_wait)
                    await conn.ping(b"")
        except (epws.ConnectionClosed, TimeoutError):
            # Closed, closing, or dropped by the write deadline: the read pump sees it
            # and unregisters.
            return
        except Exception:
            conn.abort()  # as Go's deferred Close: make the read pump stop too
            raise
        finally:
            ticker.cancel()
            self._waiter = None


def _deadline_pusher(
    conn: epws.Conn, loop: asyncio.AbstractEventLoop, pong_wait: float
) -> Callable[[bytes], None]:
    def on_pong(_payload: bytes) -> None:
        conn.set_read_deadline(loop.time() + pong_wait)

    return on_pong


class _Ticker:
    """Calls ``callback`` every ``period`` seconds on the loop (Go's time.Ticker)."""

    __slots__ = ("_callback", "_handle", "_loop", "_period")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, period: float, callback: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._period = period
        self._callback = callback
        self._handle = loop.call_later(period, self._fire)

    def _fire(self) -> None:
        self._handle = self._loop.call_later(self._period, self._fire)
        self._callback()

    def cancel(self) -> None:
        self._handle.cancel()


async def serve_ws(hub: Hub, conn: epws.Conn, settings: Settings | None = None) -> None:
    """Run one upgraded connection: register it, run both pumps, return when both end.

    The Go handler returns at once and leaves the pumps to their goroutines; with
    epws the connection is closed when the handler returns, so this one waits.
    """
    client = Client(hub, conn, settings)
    logger.info("%s connected", client)
    hub.register(client)
    writer = asyncio.get_running_loop().create_task(client.write_pump())
    try:
        await client.read_pump()
        await writer
    finally:
        if not writer.done():
            writer.cancel()
            await asyncio.wait([writer])
        err = client.close_error
        if isinstance(err, epws.ConnectionClosed):
            how = f"close code {err.code}"
        elif isinstance(err, TimeoutError):
            how = "read deadline exceeded"
        else:
            how = f"close code {conn.close_code}"
        logger.info("%s disconnected (%s)", client, how)

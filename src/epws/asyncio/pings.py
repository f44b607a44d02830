"""Is the peer there: pings and pongs, the keepalive and the read deadline of a Conn.

One module for the three because the keepalive's next event and the application's read
deadline share the connection's one entry in the loop's deadline queue (deadlines.py):
:meth:`~_ConnPings._arm_deadline` keeps it at the earlier of the two, so neither costs
a timer or a task. The keepalive's settings are in keepalive.py; what it does for an
application is in docs/keepalive.md.
"""

from __future__ import annotations

import asyncio
import logging
import os

from .base import _ConnBase
from .deadlines import queue_for

logger = logging.getLogger("epws")

#: Seconds: how early a due time may be acted on (as in deadlines.py: asyncio's timers
#: run up to about a millisecond early).
_EARLY = 0.001


class _ConnPings(_ConnBase):
    """Conn's liveness part: application pings, the keepalive, the read deadline."""

    __slots__ = ()

    @property
    def latency(self) -> float | None:
        """The round trip of the last keepalive ping in seconds, None before its first pong.

        Measured from our keepalive ping to its pong, so it includes the time the pong
        waited behind data in either direction (as the application sees it).
        """
        return self._latency

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

    # ------------------------------------------------------------ deadlines

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

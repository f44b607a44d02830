"""The blocking client's open connection: the sans-I/O core over a plain socket.

:func:`epws.sync.connect` (in :mod:`epws.sync.client`) opens the socket and runs the
handshake; what it returns, a :class:`ClientConnection`, is here: the reads, the
writes, keepalive and the closing handshake, apart from the proxies, TLS and
redirects that only matter until the connection is open.

The caller's thread does all the reading: :meth:`ClientConnection.recv` reads from
the socket only until the next message is complete, feeding the bytes to the
protocol core and writing what it answers (pongs, the close reply). Nothing reads
while the application does not, so the socket's receive buffer and the peer's TCP
window are the backpressure, and what the client holds is bounded by the core's
read limit plus one read (64 KiB) of parsed messages.

Any thread may :meth:`~ClientConnection.send` while another waits in ``recv``: one
lock serializes the core and the socket writes (never held while blocked reading).
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

from ..exceptions import ConnectionClosed, ConnectionClosedOK, closed_error
from ..protocol import Close, Failure, Pong, Protocol
from ..protocol.http11 import Response

__all__ = ["ClientConnection"]

# Bytes asked of the socket per read, open and during the handshake (client.py):
# what one read may add to the messages the client holds.
_READ_SIZE = 65536


class ClientConnection:
    """An open WebSocket connection, client side, blocking.

    Attributes:
        response: the server's answer to the opening handshake.
        subprotocol: the negotiated subprotocol, or None.
        close_timeout: seconds :meth:`close` waits for the server to finish.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        response: Response,
        subprotocol: str | None,
        rest: bytes,
        close_timeout: float,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        self.socket = sock
        self.response = response
        self.subprotocol = subprotocol
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_interval if ping_timeout is None else ping_timeout
        #: The last round trip measured by a ping (``ping()`` or keepalive), in seconds.
        self.latency: float | None = None
        self._protocol = protocol
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._messages: collections.deque[str | bytes] = collections.deque()
        # Pings waiting for their pong: payload -> when sent, then when answered.
        # Only payloads we sent are recorded, so unsolicited pongs cost nothing.
        self._pings: dict[bytes, float] = {}
        self._pongs: dict[bytes, float] = {}
        self._keepalive: bytes | None = None
        self._last_read = time.monotonic()
        self._eof = False
        self._closed = False
        if rest:
            self._feed(rest)

    # ------------------------------------------------------------ state

    @property
    def close_code(self) -> int | None:
        """The close code received, or 1006 if none came; None while open."""
        rcvd = self._protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return 1006 if self._closed else None

    def _closed_error(self) -> ConnectionClosed:
        return closed_error(self._protocol)

    # ------------------------------------------------------------ reading

    def _feed(self, data: bytes) -> None:
        """Hand bytes (b"": EOF) to the core; queue messages, answer what needs it."""
        with self._lock:
            protocol = self._protocol
            if data:
                events = protocol.receive_data(data)
            else:
                self._eof = True
                protocol.receive_eof()
                events = []
            out = protocol.data_to_send()
            for ev in events:
                kind = type(ev)
                if kind is str or kind is bytes:
                    self._messages.append(ev)  # type: ignore[arg-type]
                elif kind is Pong:
                    sent = self._pings.pop(ev.payload, None)  # type: ignore[union-attr]
                    if sent is not None:
                        now = time.monotonic()
                        self.latency = now - sent
                        self._pongs[ev.payload] = now  # type: ignore[union-attr]
                elif kind is Close:
                    out += protocol.close_reply()
                elif kind is Failure:
                    out += protocol.fail(ev.code, str(ev.error))  # type: ignore[union-attr]
            if out:
                self._send_raw(out)
        # TCP goes when the server closes it (RFC 6455 §7.1.1), or at once if we failed.
        if self._eof or protocol.failed:
            self._shut()

    def _send_raw(self, data: bytes) -> None:
        try:
            self.socket.sendall(data)
        except OSError:
            self._eof = True  # the peer is gone; reading will see it too

    def _read_once(self, deadline: float | None) -> None:
        """One read from the socket, fed to the core; TimeoutError past ``deadline``."""
        if deadline is None:
            self.socket.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for a message")
            self.socket.settimeout(remaining)
        try:
            data = self.socket.recv(_READ_SIZE)
        except TimeoutError:
            raise TimeoutError("timed out waiting for a message") from None
        except OSError:
            data = b""
        self._last_read = time.monotonic()
        self._feed(data)

    def _keepalive_due(self) -> float | None:
        """Ping when the peer has been quiet for ping_interval; fail when the pong is
        later than ping_timeout. Returns when to look again (None: no keepalive).

        Runs only while the application waits in recv(): a blocking client has no
        thread to do it otherwise (and needs none: a script that does not read does
        not care whether the peer is alive until it reads again).
        """
        interval = self.ping_interval
        if not interval:
            return None
        now = time.monotonic()
        payload = self._keepalive
        if payload is not None and payload not in self._pings:
            self._pongs.pop(payload, None)
            self._keepalive = payload = None  # answered
        if payload is None:
            if now - self._last_read < interval:
                return self._last_read + interval
            payload = os.urandom(4)
            with self._lock:
                if self._protocol.close_sent is not None or self._eof:
                    return None
                self._pings[payload] = now
                self._send_raw(self._protocol.send_ping(payload))
            self._keepalive = payload
            return now + (self.ping_timeout or interval)
        due = self._pings[payload] + (self.ping_timeout or interval)
        if now < due:
            return due
        with self._lock:
            self._send_raw(self._protocol.fail(1011, "keepalive ping timeout"))
        self._shut()
        return None

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            TimeoutError: no message within ``timeout`` seconds (the connection
                stays usable; a partial message read so far is kept).
            ConnectionClosed: the connection is closed (cleanly: ConnectionClosedOK).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._reading:
            while True:
                if self._messages:
                    return self._messages.popleft()
                if self._closed or self._eof or self._protocol.close_rcvd is not None:
                    self._finish(deadline)
                    raise self._closed_error()
                wake = self._keepalive_due()
                if self._closed:
                    continue  # the keepalive failed the connection
                if wake is None or (deadline is not None and deadline <= wake):
                    self._read_once(deadline)
                    continue
                try:
                    self._read_once(wake)
                except TimeoutError:
                    continue  # time for the keepalive, not the caller's deadline

    def __iter__(self) -> Iterator[str | bytes]:
        """Messages until the connection closes; a clean close ends the loop quietly."""
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    # ------------------------------------------------------------ writing

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary message; raises ConnectionClosed once closing."""
        with self._lock:
            if self._protocol.close_sent is not None or self._eof:
                raise self._closed_error()
            if isinstance(message, str):
                frame = self._protocol.send_text(message)
            else:
                frame = self._protocol.send_binary(message)
            self.socket.sendall(frame)

    def ping(self, data: bytes = b"", timeout: float | None = 10.0) -> float:
        """Send a ping and read until its pong comes; return the round trip in seconds.

        Messages that arrive meanwhile are kept for :meth:`recv`.
        """
        with self._lock:
            if self._protocol.close_sent is not None or self._eof:
                raise self._closed_error()
            self._pongs.pop(data, None)
            sent = time.monotonic()
            self._pings[data] = sent
            self.socket.sendall(self._protocol.send_ping(data))
        deadline = None if timeout is None else sent + timeout
        try:
            with self._reading:
                while data not in self._pongs:
                    if self._closed or self._eof or self._protocol.close_rcvd is not None:
                        raise self._closed_error()
                    self._read_once(deadline)
            return self._pongs[data] - sent
        finally:
            self._pings.pop(data, None)
            self._pongs.pop(data, None)

    # ------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (at most :attr:`close_timeout` seconds), then
        close the socket. Messages that arrive after our close frame are dropped.
        Safe to call more than once.
        """
        with self._lock:
            if self._closed:
                return
            frame = self._protocol.send_close(code, reason)
            if frame:
                self._send_raw(frame)
        with self._reading:
            self._finish(time.monotonic() + self.close_timeout)

    def _finish(self, deadline: float | None) -> None:
        """Read until the server closes TCP (RFC 6455 §7.1.1), or the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.close_timeout
        try:
            while not self._closed and not self._eof:
                self._read_once(deadline)
        except TimeoutError:
            pass
        self._shut()

    def _shut(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.socket.close()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""What every :class:`~epws.asyncio.conn.Conn` holds, and what its parts call of each other.

Conn is one class assembled from parts, a module each, so that each job reads on its
own: the read path and the transport's callbacks (conn.py), writing and flow control
(writing.py), the closing handshake (closing.py), pings, the keepalive and the read
deadline (pings.py). The parts are base classes of Conn, not objects it holds, because
the send and receive paths are benchmarked: a helper object would cost an attribute
lookup on every message, and an object per idle connection (issue 9). Every part
derives from :class:`_ConnBase`, which has the one ``__slots__`` (the parts add none,
so they combine) and the constructor, and declares for the type checker the few
methods one part calls in another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionClosed
from ..protocol import Close, Failure, Protocol
from .corking import WriteBatch, batch_for
from .keepalive import KEEPALIVE_PAYLOAD, keepalive_settings
from .messages import Inbound

if TYPE_CHECKING:
    from ..protocol.http11 import Request, Response
    from .conn import Conn

#: "No keepalive ping sent yet": one shared float, so a new connection allocates none.
_NEVER = float("-inf")


class _ConnBase(asyncio.Protocol):
    """The state of a connection; its behaviour is in the parts (see the module docstring)."""

    __slots__ = (
        "_batch",
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
        self._inbound = Inbound(max_queue)
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
        # Corked writes: frames written during one loop iteration go out in one call
        # (corking.py); the batch is the loop's, looked up once here.
        self._batch: WriteBatch = batch_for(self.loop)
        self._wpending: list[bytes] | None = None
        self._wpending_size = 0
        if ka is not None:
            # The handshake just proved the peer alive: the first ping is due after one
            # interval (_ka_sent stays _NEVER until then).
            self._ka_at = self.loop.time() + ka.interval
            self._arm_deadline()

    if TYPE_CHECKING:
        # Called by one part and defined in another: declared here so that each part
        # type-checks on its own (Conn, which derives from every part, has them all).

        # writing.py
        def _write(self, data: bytes) -> None: ...
        def _flush(self) -> None: ...

        # closing.py
        def _closed_error(self, exc: BaseException | None = None) -> ConnectionClosed: ...
        def _closed_exc(self) -> ConnectionClosed: ...
        def _start_close(self, frame: bytes, *, failed: bool = False) -> None: ...
        def abort(self) -> None: ...

        # pings.py
        def _arm_deadline(self) -> None: ...

        # conn.py
        def _parse_held(self) -> None: ...

"""Writing on a :class:`~epws.asyncio.conn.Conn`: messages, corking, flow control; broadcast.

A whole message is encoded and handed on in one synchronous call, so the frames of
two writers never interleave (docs/concurrency.md); a fragmented one
(:class:`MessageWriter`) owns the wire until it ends. Frames written during one loop
iteration are corked and leave in one transport write. A writer waits only while the
transport's buffer is over its high-water mark; while nobody waits to write, the
connection stops reading instead, so input that costs output (pongs, echoes) cannot
grow the buffer without bound (see messages.py, ``WRITING``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConcurrencyError, InvalidState
from ..prepared import PreparedMessage
from ..protocol import Ping
from ..protocol.frames import MessageType
from .base import _ConnBase
from .messages import WRITING

if TYPE_CHECKING:
    from .conn import Conn

__all__ = ["MessageWriter", "broadcast"]


class _ConnWriting(_ConnBase):
    """Conn's writing part: whole and fragmented messages, corking, the transport's
    flow control (``pause_writing`` / ``resume_writing``)."""

    __slots__ = ()

    @property
    def buffered_amount(self) -> int:
        """Bytes handed to the transport and not yet sent (like the browser API's)."""
        transport = self.transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + self._wpending_size

    # ------------------------------------------------------------ corking

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for the transport; everything queued in one loop iteration
        goes out in one write (one system call instead of one per frame), except while
        this connection is the only one with output waiting: then the first frames
        leave early, in groups that double (corking.py says why).

        Once the queue and the transport's buffer together pass the write limit the
        queue is flushed at once, so the transport sees the pressure (and pauses
        writers) exactly as without corking, and memory stays within the limit plus
        one frame.
        """
        pending = self._wpending
        batch = self._batch
        if pending is None:
            pending = self._wpending = []
            if not batch.conns:
                self.loop.call_soon(batch.run)
            batch.conns.append(self)
        pending.append(data)
        size = self._wpending_size + len(data)
        self._wpending_size = size
        if size + self.transport.get_write_buffer_size() >= self._write_limit:
            self._flush()
        elif len(pending) >= batch.split and len(batch.conns) == 1:
            # Alone: hand these on now, and stay in the batch for the rest.
            batch.split *= 2
            transport = self.transport
            if not transport.is_closing():
                transport.writelines(pending)
            pending.clear()
            self._wpending_size = 0

    def _flush(self) -> None:
        pending = self._wpending
        if pending is None:
            return
        self._wpending = None
        self._wpending_size = 0
        transport = self.transport
        if not pending or transport.is_closing():
            return
        if len(pending) == 1:
            transport.write(pending[0])
        else:
            transport.writelines(pending)

    # ------------------------------------------------------------ messages

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
            self._inbound.resume(self, WRITING)
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

    # ------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        self._write_paused = True
        if not self._drain_waiters:
            # Nobody waits to write, so nothing slows the input that costs output
            # (pongs; echoes in callback mode): stop taking input (see messages.py).
            self._inbound.pause(self, WRITING)

    def resume_writing(self) -> None:
        self._write_paused = False
        inbound = self._inbound
        inbound.resume(self, WRITING)
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

    def __init__(self, conn: _ConnWriting, message_type: MessageType) -> None:
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

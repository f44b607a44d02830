"""The closing handshake of a :class:`~epws.asyncio.conn.Conn`, and the error it ends with.

Every close starts in one place, :meth:`~_ConnClosing._start_close`: our close frame
goes out, then TCP goes once both close frames are out (the server first, RFC 6455
§7.1.1), at once if we failed, and after ``close_timeout`` at the latest. The peer's
close frame waits behind the messages that arrived before it, and is answered when the
reader gets past them or after ``close_timeout`` (:meth:`~_ConnClosing._peer_closing`).
TCP is dropped in one place, :meth:`~_ConnClosing.abort`. Readers and writers of a
closed connection get a fresh :class:`~epws.ConnectionClosed` for each raise
(:meth:`~_ConnClosing._closed_exc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Self

from ..exceptions import ConnectionClosed, closed_error
from ..protocol import Close, Failure, Side
from .base import _ConnBase

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, drops the queue
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


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


class _ConnClosing(_ConnBase):
    """Conn's closing part: the closing handshake both ways, timers, dropping TCP."""

    __slots__ = ()

    @property
    def close_code(self) -> int | None:
        """The close code received once closed; 1005 if the frame had none, 1006 if none came."""
        rcvd = self._protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return 1006 if self._closed else None

    def _closed_error(self, exc: BaseException | None = None) -> ConnectionClosed:
        return closed_error(self._protocol, exc)

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
        inbound.close(self)
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
        if self._protocol.side is Side.SERVER and not failed:
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the peer's close

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
        inbound.close(self)
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

"""uvicorn's WebSocket protocol class: one connection from the request head to the end.

:class:`WebSocketProtocol` is what ``--ws epws.asgi:WebSocketProtocol`` names (the
package re-exports it; :mod:`epws.asgi` says how uvicorn drives it). Before the 101 it
is the transport's protocol and runs the app; on ``websocket.accept`` it hands the
transport to a :class:`~epws.asyncio.conn.Conn` and keeps only the translation of
ASGI's ``receive`` and ``send`` into the Conn's calls, the per-message path. The
scope and the bytes of denial responses come from :mod:`epws.asgi.http`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from ..asyncio.conn import Conn
from ..exceptions import ConnectionClosed, HandshakeError
from ..protocol import MessageCodec, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import build_response, check_request
from ..protocol.http11 import Request, RequestParser, build_http_response
from .http import denial_bytes, merge_default, str_headers, websocket_scope
from .interface import (
    ASGIApp,
    ClientDisconnected,
    Message,
    Scope,
    UvicornConfig,
    UvicornServerState,
    logger,
)

__all__ = ["CLOSE_TIMEOUT", "WebSocketProtocol"]

#: Seconds the closing handshake may take, as in uvicorn's implementations (which
#: hard-code the same 10 s): after it the connection is dropped.
CLOSE_TIMEOUT = 10.0

# Phases of one connection.
_HANDSHAKE = 0  # request parsed, the app has not answered yet
_OPEN = 1  # accepted: the Conn owns the transport
_RESPONSE = 2  # the app is sending a denial response
_DONE = 3  # refused, denial response sent, or connection gone before accepting

# Pre-accept input is a client error (RFC 6455 §4.1: it waits for the 101); a little
# is kept for the Conn, and reading pauses once any arrives.
_EARLY_LIMIT = 65536


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection under uvicorn, from the request head to the end.

    Until the app accepts, this object is the transport's protocol: it parses and
    checks the request, runs the app, and answers ``websocket.close`` with 403, a
    failure with 500 and ``websocket.http.response.*`` with the app's response. On
    ``websocket.accept`` it writes the 101 and hands the transport to a
    :class:`~epws.asyncio.conn.Conn` with uvicorn's settings (``ws_max_size`` the read
    limit, ``ws_max_queue`` the unread messages before reading pauses,
    ``ws_per_message_deflate`` whether compression is negotiated, ``ws_ping_interval``
    and ``ws_ping_timeout`` the Conn's own keepalive: no timer here); it keeps the ASGI
    translation.
    It stays in ``server_state.connections`` until TCP is gone, so uvicorn's graceful
    shutdown reaches it: :meth:`shutdown` closes an open WebSocket with 1012.
    """

    def __init__(
        self,
        config: UvicornConfig,
        server_state: UvicornServerState,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_running_loop()
        self.app_state = app_state if app_state is not None else {}
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport: asyncio.Transport | None = None
        self.scope: Scope | None = None
        self.conn: Conn | None = None
        self._parser: RequestParser | None = RequestParser()
        self._request: Request | None = None
        self._key = ""
        self._codec: MessageCodec | None = None
        self._extensions: str | None = None
        self._phase = _HANDSHAKE
        self._connect_sent = False
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self._early: bytearray | None = None  # frames sent before the 101 (a client error)
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Denial response: the head waits for the first body message, to know whether
        # the whole body is in it (Content-Length) or more follows (chunked).
        self._response: tuple[int, list[tuple[str, str]]] | None = None
        self._chunked = False
        self._disconnect: dict[str, Any] | None = None

    # ------------------------------------------------------------ before the 101

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # The client must wait for our answer before sending frames (RFC 6455
            # §4.1); keep a little for the Conn to judge, and stop reading.
            if self._phase == _HANDSHAKE:
                early = self._early
                if early is None:
                    early = self._early = bytearray()
                    assert self.transport is not None
                    self.transport.pause_reading()
                early += data[: _EARLY_LIMIT - len(early)]
            return
        try:
            request = parser.feed(data)
            if request is None:
                return
            self._parser = None
            self._key = check_request(request)
            if self.config.ws_per_message_deflate:
                self._codec, self._extensions = PerMessageDeflate().server_negotiate(request)
        except HandshakeError as exc:
            self._parser = None
            self._refuse(exc.status, (str(exc) + "\n").encode(), exc.headers)
            return
        self._request = request
        if parser.rest:
            self.data_received(parser.rest)
        self._start_app(request)

    def _start_app(self, request: Request) -> None:
        transport = self.transport
        assert transport is not None
        self.scope = websocket_scope(
            request,
            transport,
            root_path=self.config.root_path,
            asgi_version=self.config.asgi_version,
            app_state=self.app_state,
        )
        task = self.loop.create_task(self._run_app())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A plain HTTP answer instead of the 101, then close."""
        transport = self.transport
        if self._phase != _DONE:
            self._phase = _DONE
            if transport is not None and not transport.is_closing():
                merged = merge_default(self.default_headers, list(headers))
                transport.write(build_http_response(status, body=body, headers=merged))
                transport.close()

    def eof_received(self) -> bool | None:
        return None  # before the 101 a half-close ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        # Only called before the 101 (afterwards the Conn is the protocol).
        self._gone()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _gone(self) -> None:
        """TCP is gone (before or after the 101): leave uvicorn's set, wake receive."""
        if self._lost:
            return
        self._lost = True
        self._parser = None
        if self._phase != _OPEN:
            self._phase = _DONE
        self.connections.discard(self)
        for waiter in (self._lost_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ uvicorn's shutdown

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close with 1012 (Service Restart).

        A connection the app has not answered yet gets 503 (uvicorn's own
        implementations send 500, which blames the app for the server's restart).
        The app's ``receive`` then gives ``websocket.disconnect`` with 1012 once the
        client has answered the close frame (within the close timeout).
        """
        conn = self.conn
        if conn is not None:
            conn.close_nowait(1012)
        elif self._phase == _HANDSHAKE:
            self._refuse(503, b"Service Unavailable\n")
        elif self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ the app

    async def _run_app(self) -> None:
        scope = self.scope
        assert scope is not None
        try:
            result = await self.app(scope, self.receive, self.send)
        except ClientDisconnected:
            self._end(1000)
        except asyncio.CancelledError:
            # uvicorn cancels apps still running when the graceful shutdown times out.
            self._end(1012)
            raise
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            self._end(1011)
        else:
            if self._phase == _HANDSHAKE:
                logger.error("ASGI callable returned without completing handshake.")
            elif result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
            self._end(1000)

    def _end(self, code: int) -> None:
        """The app is finished: nothing may stay open for it.

        Not answered yet: 500 (the app failed to decide). Open: a close frame with
        ``code`` (1000 when the app returned, 1011 when it raised) unless one is out
        already. A denial response cut short: TCP is closed.
        """
        if self._phase == _HANDSHAKE:
            self._refuse(500, b"Internal Server Error\n")
        elif self._phase == _OPEN:
            conn = self.conn
            assert conn is not None
            conn.close_nowait(code, "internal error" if code == 1011 else "")
        elif self._phase == _RESPONSE and self.transport is not None:
            self.transport.close()
            self._phase = _DONE

    async def receive(self) -> Message:
        """The next ASGI event: ``websocket.connect`` first, then messages, then the end."""
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        conn = self.conn
        if conn is None:
            # Not accepted (yet): the only thing that can happen is the end.
            if not self._lost and self._phase != _DONE:
                waiter = self._lost_waiter
                if waiter is None:
                    waiter = self._lost_waiter = self.loop.create_future()
                await asyncio.shield(waiter)
                if self.conn is not None:
                    return await self.receive()
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        disconnect = self._disconnect
        if disconnect is not None:
            return dict(disconnect)
        try:
            data = await conn.recv()
        except ConnectionClosed as exc:
            disconnect = self._disconnect = self._disconnect_event(exc)
            return dict(disconnect)
        if type(data) is str:
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    def _disconnect_event(self, exc: ConnectionClosed) -> dict[str, Any]:
        """The code the app sees: the client's close code, else ours, else 1006.

        RFC 6455 §7.1.5 names the code received; when none came because we failed
        the connection (1009 over ``ws_max_size``, 1002, 1007) or closed it and the
        client vanished, our code tells the app more than 1006 would, as uvicorn's
        ``wsproto`` implementation does.
        """
        if exc.rcvd_code is not None:
            return {
                "type": "websocket.disconnect",
                "code": exc.rcvd_code,
                "reason": exc.rcvd_reason,
            }
        if exc.sent_code is not None:
            return {
                "type": "websocket.disconnect",
                "code": exc.sent_code,
                "reason": exc.sent_reason,
            }
        return {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    async def send(self, message: Message) -> None:
        """Carry out one ASGI event of the app; errors in the event raise here."""
        kind = message["type"]
        phase = self._phase
        if phase == _OPEN:
            conn = self.conn
            assert conn is not None
            if kind == "websocket.send":
                data = message.get("bytes")
                text = message.get("text")
                if (data is None) == (text is None):
                    raise TypeError("websocket.send needs exactly one of 'bytes' and 'text'")
                if data is None:
                    if not isinstance(text, str):
                        raise TypeError(f"websocket.send 'text' must be str, got {type(text)}")
                    data = text
                elif not isinstance(data, (bytes, bytearray, memoryview)):
                    raise TypeError(f"websocket.send 'bytes' must be bytes, got {type(data)}")
                # The Conn's corking applies: the frames an app sends in one step of its
                # task leave in one write when the task next waits (or sooner, once
                # they pass the write limit). An echo of queued messages or a broadcast
                # of queued lines then costs a system call per connection per step,
                # not per frame (the ASGI spec asks a flush per send of HTTP bodies
                # only; an app that blocks the loop delays its own frames either way).
                try:
                    await conn.send(data)
                except ConnectionClosed as exc:
                    raise ClientDisconnected(str(exc)) from exc
                return
            if kind == "websocket.close":
                if conn.closed:
                    raise ClientDisconnected("the connection is closed")
                conn.close_nowait(message.get("code", 1000), message.get("reason") or "")
                return
            raise RuntimeError(
                f"expected ASGI message 'websocket.send' or 'websocket.close', got {kind!r}"
            )
        if self._lost:
            raise ClientDisconnected("the connection is closed")
        if phase == _HANDSHAKE:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._log(403)
                self._refuse(403, b"")
            elif kind == "websocket.http.response.start":
                self._start_response(message)
            else:
                raise RuntimeError(
                    "expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
            return
        if phase == _RESPONSE:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected 'websocket.http.response.body', got {kind!r}")
            await self._response_body(message)
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r}: the response is complete")

    def _log(self, what: object) -> None:
        scope = self.scope
        if scope is None or not logger.isEnabledFor(logging.INFO):
            return
        client = scope["client"]
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("ascii")
        who = f"{client[0]}:{client[1]}" if client else ""
        logger.info('%s - "WebSocket %s" %s', who, target.replace('"', "%22"), what)

    # ------------------------------------------------------------ accepting

    def _accept(self, message: Message) -> None:
        request = self._request
        transport = self.transport
        scope = self.scope
        assert request is not None and transport is not None and scope is not None
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in scope["subprotocols"]:
            # The client would fail the connection (RFC 6455 §4.1): say so to the app.
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client "
                f"(offered: {scope['subprotocols']!r})"
            )
        headers = str_headers(message.get("headers") or (), "websocket.accept")
        for name, _ in headers:
            if name.lower() == "sec-websocket-protocol":
                raise ValueError("websocket.accept headers must not set sec-websocket-protocol")
        response = build_response(
            self._key,
            subprotocol=subprotocol,
            extensions=self._extensions,
            extra_headers=merge_default(self.default_headers, headers),
        )
        self._log("[accepted]")
        protocol = Protocol(Side.SERVER, max_size=self.config.ws_max_size, codec=self._codec)
        # The Conn keeps no request: the app has every field of it in the scope.
        # uvicorn's keepalive is the Conn's (one entry in the loop's deadline queue, no
        # timer per connection); 0 turns either off, as in uvicorn.
        conn = Conn(
            protocol,
            max_queue=self.config.ws_max_queue,
            close_timeout=CLOSE_TIMEOUT,
            subprotocol=subprotocol,
            ping_interval=self.config.ws_ping_interval or None,
            ping_timeout=self.config.ws_ping_timeout or None,
        )
        self._request = None
        transport.write(response)
        self._phase = _OPEN
        self.conn = conn
        conn.on_close = self._conn_closed
        transport.set_protocol(conn)
        conn.connection_made(transport)
        early = self._early
        if early is not None:
            # Reading was paused on the early bytes: the Conn parses them under its
            # own rules and resumes reading only if none of them holds it.
            self._early = None
            conn._inbound.hand_over(conn, bytes(early))
        waiter = self._lost_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a receive() waiting before the accept reads on

    def _conn_closed(self, exc: ConnectionClosed) -> None:
        self._gone()

    # ------------------------------------------------------------ denial response

    def _start_response(self, message: Message) -> None:
        status = message["status"]
        if not isinstance(status, int) or not 100 <= status <= 599 or status == 101:
            raise RuntimeError(f"invalid HTTP status {status!r} for a denial response")
        headers = str_headers(message.get("headers") or (), "websocket.http.response.start")
        self._log(status)
        self._response = (status, headers)
        self._phase = _RESPONSE

    async def _response_body(self, message: Message) -> None:
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"websocket.http.response.body 'body' must be bytes, got {type(body)}")
        body = bytes(body)
        more = bool(message.get("more_body", False))
        transport = self.transport
        assert transport is not None
        head = self._response
        self._response = None
        out, self._chunked = denial_bytes(head, self._chunked, body, more, self.default_headers)
        if not transport.is_closing():
            transport.writelines(out)
        if not more:
            self._phase = _DONE
            transport.close()
        elif self._write_paused and not self._lost:
            waiter = self._drain_waiter = self.loop.create_future()
            await waiter
            self._drain_waiter = None

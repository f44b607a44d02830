"""The opening handshake of a server's connections: the :class:`Upgrader` policy and its hooks.

One asyncio protocol object per accepted connection (``_HTTPProtocol``) reads the HTTP
request (bounded in size and time), asks the application's ``process_request`` whether
to answer it as plain HTTP (an :class:`HTTPResponse`: a page, a 404), and otherwise
upgrades: it negotiates (:meth:`Upgrader.negotiate`), shows the 101 response to the
application's ``process_response`` (which may add headers or refuse instead), writes it
and hands the transport to a :class:`~epws.asyncio.conn.Conn`, whose handler the
:class:`~epws.asyncio.server.Server` then starts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exceptions import BadOrigin, HandshakeError
from ..protocol import MessageCodec, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import (
    SWITCHING_PROTOCOLS,
    build_response,
    check_origin_same,
    check_request,
    is_upgrade_request,
    origin_allowed,
    response_fields,
    select_subprotocol,
    upgrade_required,
)
from ..protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    build_http_response,
    render_head,
)
from .conn import Conn
from .keepalive import KEEPALIVE_PAYLOAD, keepalive_settings

if TYPE_CHECKING:
    from .server import Server

__all__ = ["HTTPResponse", "Upgrader"]

logger = logging.getLogger("epws.server")

#: The fields of the 101 that carry the negotiation: the connection is set up from
#: what was negotiated, so ``process_response`` may not change them (see serve()).
_NEGOTIATED = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
)


@dataclass(slots=True)
class HTTPResponse:
    """A plain HTTP answer to a request that is not (or may not be) upgraded."""

    status: int
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()

    def serialize(self, head_only: bool = False) -> bytes:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        data = build_http_response(
            self.status, body=body, content_type=self.content_type, headers=self.headers
        )
        if head_only:
            return data[: len(data) - len(body)]
        return data


@dataclass(slots=True)
class Upgrader:
    """How a server upgrades HTTP requests to WebSocket (gorilla's Upgrader).

    Attributes:
        check_origin: None (the default) refuses cross-origin requests with 403, as
            gorilla does: a browser page from another site must not open a socket that
            carries the user's cookies. A list of allowed origins
            (``["https://example.com"]``, ``["*"]`` for any) or a function
            ``(Request) -> bool`` replaces the check.
        subprotocols: subprotocols the server speaks; the first one the client offers
            that is in this list is selected.
        read_limit: largest message accepted, in bytes (None: no limit). 1 MiB by
            default; a larger message fails the connection with 1009 before it is
            buffered.
        max_queue: unread messages buffered before reading from the socket pauses.
        write_limit: transport buffer high-water mark; writers wait above it.
        handshake_timeout: seconds a client has to send its request before the
            connection is dropped.
        close_timeout: seconds the closing handshake may take.
        ping_interval: seconds between keepalive pings (None: no keepalive); 20 by
            default, see docs/keepalive.md.
        ping_timeout: seconds a keepalive ping waits for a pong before the connection
            fails with 1011 (None: never; the pings then only measure ``latency``).
        ping_payload: the payload of keepalive pings (at most 125 bytes):
            ``b"epws keepalive"`` by default, so that they never answer for the
            application's own pings; ``b""`` for the empty pings gorilla's chat sends.
            Kept once for all the server's connections, not per connection.
        max_request_line, max_headers, max_header_bytes: bounds of the HTTP request,
            so a huge or endless request cannot hold memory.
        extra_headers: headers added to the 101 response.
        compression: permessage-deflate settings (:class:`~epws.PerMessageDeflate`;
            on by default, as in browsers), or None to decline every offer.
        on_refusal: called as ``on_refusal(error, request)`` for each request the
            server refuses by itself, just before the error response is written:
            one it cannot parse or that is over a bound (400, 414, 431; ``request``
            is then None), one that is not an upgrade or asks for another version
            (426), a bad key (400), a cross-origin one (403). ``error.status`` is the
            status sent. For metrics and logs: without it an application sees only
            the handshakes it answers itself (``process_request``) and the ones
            that succeed (the handler). An exception it raises is logged; the
            refusal is sent anyway.
    """

    check_origin: Callable[[Request], bool] | Sequence[str] | None = None
    subprotocols: Sequence[str] = ()
    read_limit: int | None = 1 << 20
    max_queue: int = 16
    write_limit: int = 64 * 1024
    handshake_timeout: float = 10.0
    close_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    ping_payload: bytes = KEEPALIVE_PAYLOAD
    max_request_line: int = 8192
    max_headers: int = 128
    max_header_bytes: int = 65536
    extra_headers: Sequence[tuple[str, str]] = ()
    compression: Any = field(default_factory=PerMessageDeflate)
    on_refusal: Callable[[HandshakeError, Request | None], None] | None = None

    def __post_init__(self) -> None:
        # A bad keepalive value fails here, at serve(), not at the first handshake.
        keepalive_settings(self.ping_interval, self.ping_timeout, self.ping_payload)

    def origin_ok(self, request: Request) -> bool:
        check = self.check_origin
        if check is None:
            return check_origin_same(request)
        if callable(check):
            return bool(check(request))
        return origin_allowed(request, check)

    def negotiate(self, request: Request) -> tuple[bytes, Protocol, str | None]:
        """Validate an upgrade request; return the 101 response, the protocol, subprotocol.

        Raises HandshakeError (with the status to answer) when the request is refused.
        """
        key, extensions, protocol, subprotocol = self._negotiate(request)
        head = build_response(
            key, subprotocol=subprotocol, extensions=extensions, extra_headers=self.extra_headers
        )
        return head, protocol, subprotocol

    def _negotiate(self, request: Request) -> tuple[str, str | None, Protocol, str | None]:
        """The checks and the negotiation: the key, the extensions answered, the
        protocol set up from them and the subprotocol."""
        key = check_request(request)
        if not self.origin_ok(request):
            raise BadOrigin(f"origin {request.headers.get('Origin')!r} not allowed")
        subprotocol = select_subprotocol(request, self.subprotocols) if self.subprotocols else None
        codec: MessageCodec | None = None
        extensions: str | None = None
        if self.compression is not None:
            codec, extensions = self.compression.server_negotiate(request)
        protocol = Protocol(Side.SERVER, max_size=self.read_limit, codec=codec)
        return key, extensions, protocol, subprotocol


class _HTTPProtocol(asyncio.Protocol):
    """Reads one HTTP request, then answers it or upgrades the connection."""

    __slots__ = ("_parser", "_paused", "_pending", "_server", "_timer", "_transport")

    def __init__(self, server: Server) -> None:
        self._server = server
        up = server.upgrader
        self._parser: RequestParser | None = RequestParser(
            max_line=up.max_request_line,
            max_headers=up.max_headers,
            max_header_bytes=up.max_header_bytes,
        )
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The task awaiting an async process_request for this request, if any.
        self._pending: asyncio.Task[None] | None = None
        # Whether reading is paused: only while an async hook runs (see _call_hook).
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._server._closing:
            transport.close()
            return
        self._server._handshakes.add(self)
        self._timer = asyncio.get_running_loop().call_later(
            self._server.upgrader.handshake_timeout, self._timed_out
        )

    def _done(self) -> None:
        """The handshake stage is over (answered, upgraded, refused or lost)."""
        self._server._handshakes.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shut_down(self) -> None:
        """The server is closing: end this handshake, never upgrade it.

        A complete request (its process_request still running) is answered 503, so the
        client knows it was refused rather than cut; a partial one is just closed.
        """
        transport = self._transport
        self._parser = None
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.cancel()
        self._done()
        if transport is None or transport.is_closing():
            return
        if pending is not None:
            transport.write(build_http_response(503, body=b"server shutting down\n"))
        transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            logger.debug("opening handshake timed out")
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        self._parser = None
        pending = self._pending
        if pending is not None:
            # Nobody is left to answer: don't keep the application's work running.
            self._pending = None
            pending.cancel()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # request complete; anything more waits for the upgrade
        transport = self._transport
        assert transport is not None
        try:
            request = parser.feed(data)
        except HandshakeError as exc:
            self._parser = None
            self._refuse(exc)
            return
        if request is None:
            return
        self._parser = None
        rest = parser.rest
        process = self._server.process_request
        if process is None:
            self._upgrade(request, rest)
            return

        def then(result: HTTPResponse | None) -> None:
            if result is not None:
                self._answer(request, result)
            else:
                self._upgrade(request, rest)

        self._call_hook("process_request", lambda: process(request), then)

    def _call_hook(
        self,
        name: str,
        call: Callable[[], Awaitable[HTTPResponse | None] | HTTPResponse | None],
        then: Callable[[HTTPResponse | None], None],
    ) -> None:
        """Run an application hook (sync or async) and go on with ``then(result)``.

        A hook that raises is answered 500 (and logged). An async one runs in a task
        while the handshake stays open: still bounded by ``handshake_timeout``, ended
        (503) by :meth:`Server.close`, cancelled if the client goes.
        """
        try:
            result = call()
        except Exception:
            logger.exception("%s failed", name)
            result = HTTPResponse(500, "Internal Server Error\n")
        if inspect.isawaitable(result):
            # The answer comes later: until the Conn takes over, bytes the client sends
            # must wait in the kernel, not reach this protocol (which drops them).
            if not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            self._pending = asyncio.get_running_loop().create_task(
                self._finish_async(name, result, then)
            )
            return
        then(result)

    async def _finish_async(
        self,
        name: str,
        pending: Awaitable[HTTPResponse | None],
        then: Callable[[HTTPResponse | None], None],
    ) -> None:
        try:
            result = await pending
        except Exception:
            logger.exception("%s failed", name)
            result = HTTPResponse(500, "Internal Server Error\n")
        if self._pending is not asyncio.current_task():
            return  # shut down or lost meanwhile: that path answered (or nobody listens)
        self._pending = None
        if self._transport is None or self._transport.is_closing():
            return
        then(result)

    def _answer(self, request: Request, response: HTTPResponse) -> None:
        self._done()
        transport = self._transport
        assert transport is not None
        transport.write(response.serialize(head_only=request.method == "HEAD"))
        transport.close()

    def _refuse(self, exc: HandshakeError, request: Request | None = None) -> None:
        logger.info("refused WebSocket handshake: %s (%d)", exc, exc.status)
        self._done()
        on_refusal = self._server.upgrader.on_refusal
        if on_refusal is not None:
            try:
                on_refusal(exc, request)
            except Exception:
                logger.exception("on_refusal failed")
        transport = self._transport
        assert transport is not None
        body = (str(exc) + "\n").encode()
        transport.write(build_http_response(exc.status, body=body, headers=exc.headers))
        transport.close()

    def _upgrade(self, request: Request, rest: bytes) -> None:
        server = self._server
        transport = self._transport
        assert transport is not None
        if server._closing:
            # Belt and braces: close() shut every handshake down, so none gets here.
            self.shut_down()
            return
        if not is_upgrade_request(request):
            self._refuse(upgrade_required("this resource only speaks WebSocket"), request)
            return
        up = server.upgrader
        hook = server.process_response
        try:
            if hook is None:
                head, protocol, subprotocol = up.negotiate(request)
            else:
                key, extensions, protocol, subprotocol = up._negotiate(request)
        except HandshakeError as exc:
            self._refuse(exc, request)
            return
        if hook is None:
            self._switch(request, rest, head, protocol, subprotocol)
            return
        fields = response_fields(
            key, subprotocol=subprotocol, extensions=extensions, extra_headers=up.extra_headers
        )
        # Only when the application asks to see it is the 101 made an object.
        response = Response(101, "Switching Protocols", Headers(fields))

        def then(result: HTTPResponse | None) -> None:
            if result is not None:
                self._answer(request, result)
                return
            head = _render_101(response, fields)
            if head is None:
                self._answer(request, HTTPResponse(500, "Internal Server Error\n"))
                return
            self._switch(request, rest, head, protocol, subprotocol)

        self._call_hook("process_response", lambda: hook(request, response), then)

    def _switch(
        self,
        request: Request,
        rest: bytes,
        head: bytes,
        protocol: Protocol,
        subprotocol: str | None,
    ) -> None:
        """Write the 101 and hand the transport to a new Conn; the handler starts."""
        server = self._server
        transport = self._transport
        assert transport is not None
        if server._closing:
            self.shut_down()
            return
        up = server.upgrader
        self._done()
        transport.write(head)
        request.headers.compact()
        conn = Conn(
            protocol,
            max_queue=up.max_queue,
            write_limit=up.write_limit,
            close_timeout=up.close_timeout,
            ping_interval=up.ping_interval,
            ping_timeout=up.ping_timeout,
            ping_payload=up.ping_payload,
            subprotocol=subprotocol,
            request=request,
        )
        transport.set_protocol(conn)
        conn.connection_made(transport)
        self._transport = None
        server._start_handler(conn)
        if self._paused:
            # Reading was paused for an async hook: the Conn's inbound queue takes the
            # bytes read past the request and resumes reading only if none of its
            # rules holds it.
            conn._inbound.hand_over(conn, rest)
        elif rest:
            # Answered within the read that completed the request (no async hook):
            # reading never paused, so the switch costs no pause and resume (two
            # epoll_ctl calls per connection on asyncio).
            conn.data_received(rest)


def _render_101(response: Response, fields: list[tuple[str, str]]) -> bytes | None:
    """The 101 as ``process_response`` left it, or None (logged) if it broke it.

    Strict: the connection is set up from what was negotiated, so a hook that changed
    the status or a negotiated field (:data:`_NEGOTIATED`), or added a header that
    cannot be sent, gets a 500 rather than a 101 that the connection would contradict.
    """

    def negotiated(items: Any) -> list[tuple[str, str]]:
        return [(n.lower(), v) for n, v in items if n.lower() in _NEGOTIATED]

    if response.status != 101:
        logger.error(
            "process_response set status %s; return an HTTPResponse to refuse", response.status
        )
        return None
    if negotiated(response.headers) != negotiated(fields):
        logger.error("process_response changed a negotiated header of the 101; refused with 500")
        return None
    try:
        return render_head(SWITCHING_PROTOCOLS, response.headers)
    except ValueError:
        logger.exception("process_response added a header that cannot be sent")
        return None

"""Servers: the :class:`Upgrader` policy, :func:`serve`, and plain HTTP answers.

One asyncio protocol object reads the HTTP request (bounded in size and time), asks
the application's ``process_request`` whether to answer it as plain HTTP (a page, a
404), and otherwise upgrades: it negotiates, shows the 101 response to the
application's ``process_response`` (which may add headers or refuse instead), writes
it and hands the transport to a :class:`~epws.asyncio.conn.Conn`, then runs the
application's handler in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import socket
import ssl as ssl_module
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import BadOrigin, ConnectionClosed, HandshakeError
from ..protocol import MessageCodec, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import (
    SWITCHING_PROTOCOLS,
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

__all__ = ["HTTPResponse", "Server", "Upgrader", "serve", "unix_serve"]

logger = logging.getLogger("epws.server")

Handler = Callable[[Conn], Awaitable[None] | None]
ProcessRequest = Callable[[Request], "Awaitable[HTTPResponse | None] | HTTPResponse | None"]
ProcessResponse = Callable[
    [Request, Response], "Awaitable[HTTPResponse | None] | HTTPResponse | None"
]

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
        fields, protocol, subprotocol = self._negotiate(request)
        return render_head(SWITCHING_PROTOCOLS, fields), protocol, subprotocol

    def _negotiate(self, request: Request) -> tuple[list[tuple[str, str]], Protocol, str | None]:
        """:meth:`negotiate`, with the 101's header fields not rendered yet."""
        key = check_request(request)
        if not self.origin_ok(request):
            raise BadOrigin(f"origin {request.headers.get('Origin')!r} not allowed")
        subprotocol = select_subprotocol(request, self.subprotocols) if self.subprotocols else None
        codec: MessageCodec | None = None
        extensions: str | None = None
        if self.compression is not None:
            codec, extensions = self.compression.server_negotiate(request)
        fields = response_fields(
            key,
            subprotocol=subprotocol,
            extensions=extensions,
            extra_headers=self.extra_headers,
        )
        protocol = Protocol(Side.SERVER, max_size=self.read_limit, codec=codec)
        return fields, protocol, subprotocol


def _still_open(conn: Conn) -> bool:
    """True if neither side has started closing ``conn`` and its TCP connection is up.

    A ConnectionClosed from ``conn`` itself is raised only once one of these holds, so
    a handler that ends with one while this is True got it from another connection.
    """
    protocol = conn._protocol
    return (
        not conn.closed
        and conn._error is None
        and protocol.close_sent is None
        and protocol.close_rcvd is None
    )


class Server:
    """A running WebSocket server; ``async with`` it, or :meth:`close` it.

    Attributes:
        connections: the open WebSocket connections.
    """

    def __init__(
        self,
        upgrader: Upgrader,
        handler: Handler,
        process_request: ProcessRequest | None,
        process_response: ProcessResponse | None = None,
    ) -> None:
        self.upgrader = upgrader
        self.handler = handler
        self.process_request = process_request
        self.process_response = process_response
        self.connections: set[Conn] = set()
        # Handler tasks (async handlers), awaited by close().
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections still in the opening handshake: close() ends them, so that no
        # upgrade completes and no handler starts once it has begun (issue 9 item 4).
        self._handshakes: set[_HTTPProtocol] = set()
        # Listening: asyncio's server (uvloop, other loops), or our own accept loop on
        # asyncio's selector loops (see _Acceptor).
        self._server: asyncio.Server | None = None
        self._acceptor: _Acceptor | None = None
        self._closing = False
        self._closed_fut: asyncio.Future[None] | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        if self._acceptor is not None:
            return tuple(self._acceptor.socks)
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The port of the first listening socket (handy when serving on port 0)."""
        return int(self.sockets[0].getsockname()[1])

    def _protocol_factory(self) -> asyncio.Protocol:
        return _HTTPProtocol(self)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called; cancelling the wait closes the server."""
        if self._closed_fut is None:
            self._closed_fut = asyncio.get_running_loop().create_future()
            if self._closing:
                self._closed_fut.set_result(None)
        try:
            await asyncio.shield(self._closed_fut)
        except asyncio.CancelledError:
            await self.close()
            raise

    def _start_handler(self, conn: Conn) -> None:
        # connections is the truth: a Conn is in it exactly while its TCP connection is
        # open (it removes itself as TCP goes), whatever its handler does.
        self.connections.add(conn)
        conn._registry = self.connections  # it leaves the set as its TCP connection goes
        try:
            result = self.handler(conn)
        except Exception:
            logger.exception("connection handler failed")
            conn.close_nowait(1011, "internal error")
            result = None
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._run_handler(conn, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Callback mode has no task: the connection lives until either side closes it.

    async def _run_handler(self, conn: Conn, running: Awaitable[None]) -> None:
        """Run an async handler; when it ends, its connection ends too.

        The task ends only once the connection's TCP connection is gone, so
        :meth:`close` waiting for the tasks waits for the connections.
        """
        try:
            try:
                await running
            except ConnectionClosed:
                if _still_open(conn):
                    # Not this connection's: a relay or a broadcast loop let another
                    # connection's close escape. This peer did not leave; the handler
                    # failed (issue 9 item 5).
                    logger.exception(
                        "connection handler failed: ConnectionClosed of another connection"
                    )
                    await conn.close(1011, "internal error")
                else:
                    # The peer went away while the handler was reading or writing.
                    logger.debug("connection closed under the handler", exc_info=True)
                    await conn.close()  # finishes the closing handshake if need be
            except Exception:
                logger.exception("connection handler failed")
                await conn.close(1011, "internal error")
            else:
                await conn.close()
        finally:
            if not conn.closed:
                # Cancelled (by close() after its timeout) before TCP went: drop it, so
                # that no connection outlives its handler.
                conn.abort()

    async def close(
        self, code: int = 1001, reason: str = "going away", *, timeout: float = 10.0
    ) -> None:
        """Stop listening, close every connection with ``code``, wait for their handlers.

        Handlers still running after ``timeout`` seconds are cancelled.
        """
        self._closing = True
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._acceptor is not None:
            self._acceptor.close()
        if self._server is not None:
            self._server.close()
        # Requests still being read or waiting for process_request: never upgraded now.
        for handshake in list(self._handshakes):
            handshake.shut_down()
        conns = list(self.connections)
        if conns:
            await asyncio.gather(*(c.close(code, reason) for c in conns), return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


#: accept() errors that mean "out of a resource for now" (the fd limit, kernel memory):
#: the connection waits in the backlog until we can take it.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 128  # connections taken per wake-up, so one burst can't starve the loop
_BACKOFF_FIRST = 0.05  # seconds accepting pauses after a failed accept() ...
_BACKOFF_MAX = 1.0  # ... doubling up to this while it keeps failing
_LOG_EVERY = 10.0  # seconds between two log lines about failing accepts


class _Acceptor:
    """Accepts connections on the listening sockets, for asyncio's selector loops.

    Why not ``loop.create_server``'s accept loop: at the file-descriptor limit
    (EMFILE), CPython's ``BaseSelectorEventLoop._accept_connection`` (3.11 to 3.13)
    goes on calling accept() up to ``backlog`` times per wake-up, logs a traceback
    for each failure and schedules a retry timer for each: with a backlog of 1024,
    hundreds of thousands of tracebacks a minute (issue 9 item 14). Here a failing
    accept() stops accepting on every listening socket for a back-off delay (doubling
    to :data:`_BACKOFF_MAX`), logs one line at most every :data:`_LOG_EVERY` seconds,
    and resumes on its own: connections wait in the kernel's backlog meanwhile and are
    served once descriptors are free again. uvloop backs off by itself and keeps
    asyncio's server.
    """

    __slots__ = (
        "_delay",
        "_failures",
        "_loop",
        "_next_log",
        "_retry",
        "_server",
        "_setting_up",
        "_ssl",
        "socks",
    )

    def __init__(
        self,
        server: Server,
        loop: asyncio.AbstractEventLoop,
        socks: list[socket.socket],
        ssl: ssl_module.SSLContext | None,
    ) -> None:
        self._server = server
        self._loop = loop
        self.socks = socks
        self._ssl = ssl
        self._delay = _BACKOFF_FIRST
        self._retry: asyncio.TimerHandle | None = None
        self._failures = 0  # failed accepts not reported yet
        self._next_log = 0.0
        # Accepted connections whose transport is being made (a TLS handshake).
        self._setting_up: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for sock in self.socks:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop(self) -> None:
        for sock in self.socks:
            if sock.fileno() != -1:
                self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        """Stop accepting, close the listening sockets, drop TLS handshakes in progress."""
        self._stop()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.socks:
            sock.close()
        for task in list(self._setting_up):
            task.cancel()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # the backlog is empty (or that client gave up)
            except OSError as exc:
                self._back_off(exc)
                return
            self._delay = _BACKOFF_FIRST
            conn.setblocking(False)
            task = self._loop.create_task(self._set_up(conn))
            self._setting_up.add(task)
            task.add_done_callback(self._setting_up.discard)

    def _back_off(self, exc: OSError) -> None:
        """accept() failed: pause accepting for a while, say so once in a while."""
        self._stop()
        delay = self._delay
        self._delay = min(delay * 2, _BACKOFF_MAX)
        self._retry = self._loop.call_later(delay, self._resume)
        self._failures += 1
        now = self._loop.time()
        if now >= self._next_log:
            self._next_log = now + _LOG_EVERY
            level = logging.WARNING if exc.errno in _RESOURCE_ERRNOS else logging.ERROR
            logger.log(
                level,
                "accept() failed: %s; accepting paused (%d failure(s) since the last "
                "report, retrying every %.2f-%.0f s)",
                os.strerror(exc.errno) if exc.errno else exc,
                self._failures,
                _BACKOFF_FIRST,
                _BACKOFF_MAX,
            )
            self._failures = 0

    def _resume(self) -> None:
        self._retry = None
        if not self._server._closing:
            self.start()

    async def _set_up(self, conn: socket.socket) -> None:
        """Make the transport of an accepted socket (and run its TLS handshake)."""
        kwargs: dict[str, Any] = {}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
            kwargs["ssl_handshake_timeout"] = self._server.upgrader.handshake_timeout
        try:
            await self._loop.connect_accepted_socket(self._server._protocol_factory, conn, **kwargs)
        except (Exception, asyncio.CancelledError):
            # A failed TLS handshake, a reset, the server closing: nothing to answer.
            logger.debug("accepted connection failed during setup", exc_info=True)
            conn.close()


async def _listen(
    loop: asyncio.AbstractEventLoop,
    host: str | Sequence[str] | None,
    port: int,
    *,
    reuse_port: bool,
    backlog: int,
) -> list[socket.socket]:
    """Listening sockets for ``host`` and ``port``, as ``loop.create_server`` makes them.

    One socket per address the host names resolve to (every interface, IPv4 and IPv6,
    for None), SO_REUSEADDR set, IPv6 sockets IPv6-only so that both families can
    bind the same port.
    """
    if host is None or host == "":
        hosts: list[str | None] = [None]
    elif isinstance(host, str):
        hosts = [host]
    else:
        hosts = list(host)
    infos: dict[tuple[Any, ...], None] = {}
    for name in hosts:
        for info in await loop.getaddrinfo(
            name, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            infos[info] = None
    socks: list[socket.socket] = []
    try:
        for family, type_, protocol, _, address in infos:
            sock = socket.socket(family, type_, protocol)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(
                    err.errno, f"error while attempting to bind on address {address!r}: {err}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(f"no address to listen on for {hosts!r}")
    return socks


class _HTTPProtocol(asyncio.Protocol):
    """Reads one HTTP request, then answers it or upgrades the connection."""

    __slots__ = ("_parser", "_pending", "_server", "_timer", "_transport")

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
        transport.pause_reading()
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
                fields, protocol, subprotocol = up._negotiate(request)
        except HandshakeError as exc:
            self._refuse(exc, request)
            return
        if hook is None:
            self._switch(request, rest, head, protocol, subprotocol)
            return
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
        # Reading was paused for the handshake: the Conn's inbound queue takes the bytes
        # read past the request and resumes reading only if none of its rules holds it.
        conn._inbound.hand_over(rest)


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


async def serve(
    handler: Handler,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    upgrader: Upgrader | None = None,
    process_request: ProcessRequest | None = None,
    process_response: ProcessResponse | None = None,
    ssl: ssl_module.SSLContext | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
    **kwargs: Any,
) -> Server:
    """Start a WebSocket server; ``handler(conn)`` runs for each connection.

    ``process_request(request)`` (sync or async) is asked first for every request:
    return an :class:`HTTPResponse` to answer with plain HTTP (a page, a 404),
    or None to go on with the upgrade. Without it, every request must be an upgrade.

    ``process_response(request, response)`` (sync or async) is asked once the upgrade
    is negotiated, before the 101 is written: ``response`` is that 101
    (:class:`~epws.protocol.http11.Response`), whose ``headers`` it may extend or change
    (``add``, ``set``, ``remove``: a cookie, a request id, a header that depends on the
    request); return None to send it, or an :class:`HTTPResponse` to refuse the upgrade
    with that answer instead (the handler never runs). The status and the fields that
    carry the negotiation (``Upgrade``, ``Connection``, ``Sec-WebSocket-Accept``,
    ``-Protocol``, ``-Extensions``) are what the connection is set up from: a hook that
    changes them, or that raises, gets a 500. Both hooks run within
    ``handshake_timeout``, and :meth:`Server.close` answers the ones still running 503.

    ``kwargs`` are :class:`Upgrader` fields when no ``upgrader`` is given.

    An ``async`` handler runs in a task: when it returns the connection is closed
    with 1000, if it raises with 1011 (a :class:`~epws.ConnectionClosed` escaping it is
    the peer leaving, logged at debug level only).

    A plain function handler selects the **callback mode**, for servers that hold many
    connections: it is called once, sets :attr:`~epws.Conn.on_message` (and maybe
    :attr:`~epws.Conn.on_close`) and returns; no task exists per connection, and the
    connection stays open until either side closes it. Messages are then handed to
    ``on_message`` from the protocol callback, in order, as they complete.
    """
    if upgrader is None:
        upgrader = Upgrader(**kwargs)
    elif kwargs:
        raise TypeError("pass either an upgrader or Upgrader fields, not both")
    server = Server(upgrader, handler, process_request, process_response)
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        # asyncio's own accept loop floods the log at the fd limit: use ours.
        if sock is not None:
            sock.listen(backlog)
            sock.setblocking(False)
            socks = [sock]
        else:
            socks = await _listen(loop, host, port or 0, reuse_port=reuse_port, backlog=backlog)
        server._acceptor = _Acceptor(server, loop, socks, ssl)
        server._acceptor.start()
        return server
    tls: dict[str, Any] = {}
    if ssl is not None:
        tls = {"ssl": ssl, "ssl_handshake_timeout": upgrader.handshake_timeout}
    if sock is not None:
        server._server = await loop.create_server(
            server._protocol_factory, sock=sock, backlog=backlog, **tls
        )
    else:
        server._server = await loop.create_server(
            server._protocol_factory,
            host=host,
            port=port or 0,
            reuse_port=reuse_port or None,
            backlog=backlog,
            **tls,
        )
    return server


async def unix_serve(
    handler: Handler,
    path: str | os.PathLike[str],
    *,
    upgrader: Upgrader | None = None,
    process_request: ProcessRequest | None = None,
    process_response: ProcessResponse | None = None,
    ssl: ssl_module.SSLContext | None = None,
    backlog: int = 1024,
    **kwargs: Any,
) -> Server:
    """Like :func:`serve`, listening on the Unix socket at ``path``.

    For a server behind a reverse proxy on the same host (nginx's ``proxy_pass
    http://unix:/run/app.sock``): no TCP port to allocate or firewall, and file
    permissions decide who may connect. A socket file left at ``path`` by an earlier
    run is replaced, as asyncio's own Unix server does; any other kind of file there is
    an error, never removed. The socket file stays after :meth:`Server.close`.
    """
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return await serve(
        handler,
        upgrader=upgrader,
        process_request=process_request,
        process_response=process_response,
        ssl=ssl,
        sock=sock,
        backlog=backlog,
        **kwargs,
    )

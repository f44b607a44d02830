"""Servers: :func:`serve`, :func:`unix_serve` and the running :class:`Server`.

The server holds its connections and their handlers' tasks, and closes them all. What
it delegates: the opening handshake (the :class:`Upgrader` policy, plain HTTP answers,
``process_request`` and ``process_response``) is in upgrade.py, and listening (the
sockets, and on asyncio's selector loops an accept loop that backs off at the
file-descriptor limit) in listening.py; :class:`Upgrader` and :class:`HTTPResponse` are
re-exported here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..exceptions import ConnectionClosed
from ..protocol.http11 import Request, Response
from .conn import Conn
from .listening import _Acceptor, bind_unix, start_listening
from .upgrade import HTTPResponse, Upgrader, _HTTPProtocol

__all__ = ["HTTPResponse", "Server", "Upgrader", "serve", "unix_serve"]

logger = logging.getLogger("epws.server")

Handler = Callable[[Conn], Awaitable[None] | None]
ProcessRequest = Callable[[Request], "Awaitable[HTTPResponse | None] | HTTPResponse | None"]
ProcessResponse = Callable[
    [Request, Response], "Awaitable[HTTPResponse | None] | HTTPResponse | None"
]


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
        if result is not None and inspect.isawaitable(result):  # (callback mode: None)
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
    await start_listening(
        server, host, port, ssl=ssl, sock=sock, reuse_port=reuse_port, backlog=backlog
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
    sock = bind_unix(path, backlog)
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

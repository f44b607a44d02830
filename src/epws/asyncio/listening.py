"""How a :class:`~epws.asyncio.server.Server` listens: sockets, and an accept loop of its own.

On asyncio's selector loops the server accepts connections itself (``_Acceptor``), so
that at the file-descriptor limit it backs off where asyncio's own accept loop floods
the log; on other loops (uvloop, which backs off by itself) it uses the loop's
``create_server``. Either way each accepted connection goes to the server's protocol
factory, the opening handshake of upgrade.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl as ssl_module
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server

__all__ = ["bind_unix", "start_listening"]

logger = logging.getLogger("epws.server")


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


async def start_listening(
    server: Server,
    host: str | Sequence[str] | None,
    port: int | None,
    *,
    ssl: ssl_module.SSLContext | None,
    sock: socket.socket | None,
    reuse_port: bool,
    backlog: int,
) -> None:
    """Make ``server`` listen on ``sock``, or on ``host`` and ``port`` (see :func:`serve`)."""
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
        return
    tls: dict[str, Any] = {}
    if ssl is not None:
        tls = {"ssl": ssl, "ssl_handshake_timeout": server.upgrader.handshake_timeout}
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


def bind_unix(path: str | os.PathLike[str], backlog: int) -> socket.socket:
    """A Unix socket listening at ``path``, replacing a socket file left there (see
    :func:`unix_serve`)."""
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
    return sock

"""Clients: the :class:`Dialer` policy and :func:`connect`.

The dialer opens TCP (and TLS for ``wss://``), writes the upgrade request, reads the
response with a bounded parser under a timeout, checks it, and hands the transport
to a :class:`~epws.asyncio.conn.Conn`.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import HandshakeError
from ..protocol.connection import Connection, MessageCodec, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import build_request, check_response, generate_key
from ..protocol.http11 import Response, ResponseParser
from ..protocol.uri import parse_uri
from .conn import Conn

__all__ = ["Dialer", "connect"]


@dataclass(slots=True)
class Dialer:
    """How a client opens WebSocket connections (gorilla's Dialer).

    Attributes:
        headers: extra request headers, e.g. ``[("Authorization", "Bearer ...")]``.
        origin: the Origin header to send (browsers always send one; scripts need not).
        subprotocols: subprotocols to offer, in order of preference.
        handshake_timeout: seconds for TCP, TLS and the HTTP exchange together.
        ssl: the TLS context for ``wss://`` URLs (default: ``ssl.create_default_context()``).
        read_limit, max_queue, write_limit, close_timeout: as on :class:`~epws.Upgrader`.
        compression: permessage-deflate settings (:class:`~epws.PerMessageDeflate`;
            offered by default, as browsers do), or None to offer nothing.
    """

    headers: Sequence[tuple[str, str]] = ()
    origin: str | None = None
    subprotocols: Sequence[str] = ()
    handshake_timeout: float = 10.0
    ssl: ssl_module.SSLContext | None = None
    read_limit: int | None = 1 << 20
    max_queue: int = 16
    write_limit: int = 64 * 1024
    close_timeout: float = 10.0
    compression: Any = field(default_factory=PerMessageDeflate)

    async def dial(self, url: str) -> Conn:
        """Connect to ``url`` (``ws://`` or ``wss://``) and return the open connection.

        Raises:
            InvalidURI: the URL is not a WebSocket URL.
            HandshakeError: the server refused the upgrade (``status`` tells why) or
                answered something that is not a valid upgrade.
            TimeoutError: the handshake took longer than ``handshake_timeout``.
            OSError: TCP or TLS failed.
        """
        secure, host, port, resource, host_header = parse_uri(url)
        context = None
        if secure:
            context = self.ssl if self.ssl is not None else ssl_module.create_default_context()
        loop = asyncio.get_running_loop()
        key = generate_key()
        offer = None
        if self.compression is not None:
            offer = self.compression.client_offer()
        request = build_request(
            host_header,
            resource,
            key,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extensions=offer,
            extra_headers=self.headers,
        )
        async with asyncio.timeout(self.handshake_timeout):
            transport, hs = await loop.create_connection(
                lambda: _ClientHandshake(loop),
                host,
                port,
                ssl=context,
                server_hostname=host if secure else None,
            )
            try:
                transport.write(request)
                response = await hs.response
                subprotocol = check_response(response, key, self.subprotocols)
                codec: MessageCodec | None = None
                if self.compression is not None:
                    codec = self.compression.client_accept(response)
                elif response.headers.get("Sec-WebSocket-Extensions"):
                    raise HandshakeError("server accepted an extension that was not offered", 101)
            except BaseException:
                transport.abort()
                raise
        proto = Connection(Side.CLIENT, max_size=self.read_limit, codec=codec)
        conn = Conn(
            proto,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            close_timeout=self.close_timeout,
            subprotocol=subprotocol,
            response=response,
        )
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if hs.rest:
            conn.data_received(hs.rest)
        if hs.eof:
            conn.eof_received()
            transport.close()
        if hs.lost:
            # TCP went while the handshake protocol was still in place (a reset right
            # behind the 101): the transport will not tell the Conn, so we do.
            conn.connection_lost(hs.lost_exc)
        return conn


def connect(url: str, **options: Any) -> _Connect:
    """Open a WebSocket connection: ``conn = await connect(url)``.

    Also an async context manager that closes the connection on exit::

        async with epws.connect("ws://localhost:8080/ws") as conn:
            await conn.send("hello")

    ``options`` are :class:`Dialer` fields.
    """
    return _Connect(Dialer(**options), url)


class _Connect:
    """The awaitable / async context manager that :func:`connect` returns."""

    __slots__ = ("_conn", "_dialer", "_url")

    def __init__(self, dialer: Dialer, url: str) -> None:
        self._dialer = dialer
        self._url = url
        self._conn: Conn | None = None

    def __await__(self) -> Any:
        return self._dialer.dial(self._url).__await__()

    async def __aenter__(self) -> Conn:
        self._conn = await self._dialer.dial(self._url)
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()


class _ClientHandshake(asyncio.Protocol):
    """Reads the server's HTTP response to the upgrade request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.response: asyncio.Future[Response] = loop.create_future()
        self._parser: ResponseParser | None = ResponseParser()
        self.rest = b""
        self.eof = False
        self.lost = False
        self.lost_exc: Exception | None = None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.rest += data  # frames that raced the switch to Conn
            return
        try:
            response = parser.feed(data)
        except HandshakeError as exc:
            self._parser = None
            if not self.response.done():
                self.response.set_exception(exc)
            return
        if response is not None:
            self._parser = None
            self.rest = parser.rest
            if not self.response.done():
                self.response.set_result(response)

    def eof_received(self) -> bool | None:
        self.eof = True
        if not self.response.done():
            self.response.set_exception(
                HandshakeError("connection closed before the handshake response", 0)
            )
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        if not self.response.done():
            self.response.set_exception(
                HandshakeError(f"connection lost during the handshake: {exc}", 0)
            )

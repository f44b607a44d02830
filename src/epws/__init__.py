"""epws: a strict, fast RFC 6455 WebSocket library for asyncio.

Servers: :func:`serve` with an :class:`Upgrader` policy; clients: :func:`connect` or a
:class:`Dialer`. Both give a :class:`Conn`: ``await conn.recv()``, ``await
conn.send(data)``, ``async for message in conn``, ``await conn.close()``.

Concurrency: one reader at a time; whole-message writes from any task; see
docs/concurrency.md. The sans-I/O protocol core is in :mod:`epws.protocol`.
"""

from __future__ import annotations

from .asyncio.client import Backoff, Dialer, connect, unix_connect
from .asyncio.conn import Conn, MessageWriter, broadcast
from .asyncio.server import HTTPResponse, Server, Upgrader, serve, unix_serve
from .exceptions import (
    BadOrigin,
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    EpwsError,
    HandshakeError,
    InvalidState,
    InvalidURI,
    MessageTooBig,
    NegotiationError,
    ProtocolError,
    ProxyError,
    is_unexpected_close,
)
from .prepared import PreparedMessage
from .protocol.deflate import PerMessageDeflate
from .protocol.frames import CloseCode, MessageType
from .protocol.http11 import Request

__all__ = [
    "Backoff",
    "BadOrigin",
    "CloseCode",
    "ConcurrencyError",
    "Conn",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Dialer",
    "EpwsError",
    "HTTPResponse",
    "HandshakeError",
    "InvalidState",
    "InvalidURI",
    "MessageTooBig",
    "MessageType",
    "MessageWriter",
    "NegotiationError",
    "PerMessageDeflate",
    "PreparedMessage",
    "ProtocolError",
    "ProxyError",
    "Request",
    "Server",
    "Upgrader",
    "broadcast",
    "connect",
    "is_unexpected_close",
    "serve",
    "unix_connect",
    "unix_serve",
    "__version__",
]

__version__ = "0.1.0"

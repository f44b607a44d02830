"""Real servers on loopback for the client tests: epws servers and hand-written raw ones.

A raw server reads the upgrade request and lets the test's handler answer anything
(a 503, a redirect, a reset, a 101 followed by frames), counting the connections.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import epws
from epws.protocol.frames import apply_mask
from epws.protocol.handshake import accept_key

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


def parse_request(head: bytes) -> dict[str, str]:
    """Request line under ":line", headers lowercased."""
    headers: dict[str, str] = {}
    lines = head.decode("latin-1").split("\r\n")
    headers[":line"] = lines[0]
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


def switching(key: str) -> bytes:
    """A valid 101 answer to a request with ``key``."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def answer(status: int, reason: str, *headers: str) -> bytes:
    """A plain HTTP answer with no body."""
    lines = [f"HTTP/1.1 {status} {reason}", *headers, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame (server to client), payload under 126 bytes."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked client frame: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    return b0 & 0x0F, apply_mask(await reader.readexactly(n), key) if n else b""


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing server would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawServer:
    """Handle of a running raw server: its port and the requests it has seen."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[dict[str, str]] = []


@asynccontextmanager
async def raw_server(
    handler: RawHandler, *, port: int = 0, ssl: Any = None
) -> AsyncIterator[RawServer]:
    """A TCP server whose handler gets each parsed upgrade request."""
    state = RawServer()
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        req = parse_request(head)
        state.requests.append(req)
        await handler(reader, writer, req)

    tcp = await asyncio.start_server(on_client, "127.0.0.1", port, ssl=ssl)
    state.port = tcp.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        for w in writers:
            w.transport.abort()
        tcp.close()
        await tcp.wait_closed()


@asynccontextmanager
async def epws_server(
    handler: Callable[[epws.Conn], Awaitable[None]], port: int = 0, **options: Any
) -> AsyncIterator[epws.Server]:
    """An epws server on loopback, closed on exit."""
    options.setdefault("close_timeout", 2.0)
    server = await epws.serve(handler, "127.0.0.1", port, **options)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """An epws server on its own event loop in a thread, for blocking clients."""

    def __init__(self, handler: Callable[[epws.Conn], Awaitable[None]], **options: Any) -> None:
        import threading

        self._handler = handler
        self._options = options
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: epws.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._options.setdefault("close_timeout", 2.0)
        sock = self._options.pop("sock", None)
        if sock is not None:
            self.server = await epws.serve(self._handler, sock=sock, **self._options)
        else:
            self.server = await epws.serve(self._handler, "127.0.0.1", 0, **self._options)
        self._ready.set()
        await self._stop.wait()
        await self.server.close(timeout=2.0)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

"""Tests for epws.asyncio.client: connect() and the Dialer, against epws and raw servers.

The raw servers answer the upgrade by hand so that the client can be shown a wrong
accept key, an unoffered subprotocol, a masked frame, or frames glued to the 101.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trustme

import epws
from epws import ConnectionClosedError, HandshakeError, InvalidURI, NegotiationError
from epws.protocol.frames import apply_mask
from epws.protocol.handshake import accept_key

from .wsraw import frame

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


def parse_request(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    lines = head.decode("latin-1").split("\r\n")
    headers[":line"] = lines[0]
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


def switching(key: str, *extra: str, accept: str | None = None) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept or accept_key(key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[int]:
    """A TCP server whose handler gets the parsed upgrade request; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        await handler(reader, writer, parse_request(head))

    tcp = await asyncio.start_server(on_client, "127.0.0.1", 0)
    try:
        yield tcp.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.transport.abort()
        tcp.close()
        await tcp.wait_closed()


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Read one client frame, check that it is masked, return (opcode, fin, payload)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    payload = apply_mask(await reader.readexactly(n), key) if n else b""
    return b0 & 0x0F, bool(b0 & 0x80), payload


# ---------------------------------------------------------------- the request


async def test_request_headers_origin_and_masking() -> None:
    seen: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    frames: list[tuple[int, bool, bytes]] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        seen.set_result(req)
        writer.write(switching(req["sec-websocket-key"]))
        for _ in range(3):
            frames.append(await read_client_frame(reader))
        writer.write(frame(8, frames[-1][2], mask=False))  # echo the client's close
        writer.close()

    async with raw_server(handler) as port:
        conn = await epws.connect(
            f"ws://127.0.0.1:{port}/chat?room=1",
            headers=[("Authorization", "Bearer t0ken")],
            origin="https://app.example",
            subprotocols=[],
        )
        await conn.send("hello")
        await conn.send(b"\x00" * 300)
        async with asyncio.timeout(5):
            await conn.close()
        req = await seen
    assert req[":line"] == "GET /chat?room=1 HTTP/1.1"
    assert req["host"] == f"127.0.0.1:{port}"
    assert req["authorization"] == "Bearer t0ken"
    assert req["origin"] == "https://app.example"
    assert req["sec-websocket-version"] == "13"
    assert req["upgrade"].lower() == "websocket"
    assert "sec-websocket-protocol" not in req
    assert frames == [(1, True, b"hello"), (2, True, b"\x00" * 300), (8, True, b"\x03\xe8")]


async def test_dialer_object_and_read_limit() -> None:
    async def echo(conn: epws.Conn) -> None:
        async for message in conn:
            await conn.send(message)

    server = await epws.serve(echo, "127.0.0.1", 0)
    async with server:
        dialer = epws.Dialer(read_limit=100, close_timeout=2)
        conn = await dialer.dial(f"ws://127.0.0.1:{server.port}/")
        assert conn.read_limit == 100
        await conn.send(b"x" * 100)
        async with asyncio.timeout(5):
            assert await conn.recv() == b"x" * 100
        await conn.send(b"x" * 101)  # the echo is over the client's read limit
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                await conn.recv()
        assert info.value.sent_code == 1009


# ---------------------------------------------------------------- handshake failures


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "127.0.0.1:80", "ws://", "ftp://x/", "ws://h:notaport/"]
)
async def test_invalid_uri(url: str) -> None:
    with pytest.raises(InvalidURI):
        await epws.connect(url)


async def test_handshake_timeout_on_silent_server() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        await reader.read()  # never answers

    async with raw_server(handler) as port:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await epws.connect(f"ws://127.0.0.1:{port}/", handshake_timeout=0.3)
        assert 0.25 <= loop.time() - start < 3


async def test_wrong_accept_key_refused() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(switching(req["sec-websocket-key"], accept=accept_key("x" * 24)))
        await reader.read()

    async with raw_server(handler) as port:
        with pytest.raises(HandshakeError):
            async with asyncio.timeout(5):
                await epws.connect(f"ws://127.0.0.1:{port}/")


async def test_unoffered_subprotocol_refused() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(switching(req["sec-websocket-key"], "Sec-WebSocket-Protocol: surprise"))
        await reader.read()

    async with raw_server(handler) as port:
        with pytest.raises(NegotiationError):
            async with asyncio.timeout(5):
                await epws.connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat"])


async def test_unoffered_extension_refused() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(
            switching(req["sec-websocket-key"], "Sec-WebSocket-Extensions: permessage-deflate")
        )
        await reader.read()

    async with raw_server(handler) as port:
        with pytest.raises(HandshakeError):
            async with asyncio.timeout(5):
                await epws.connect(f"ws://127.0.0.1:{port}/")


async def test_http_error_status_reported() -> None:
    def process(request: epws.Request) -> epws.HTTPResponse:
        return epws.HTTPResponse(404, "nothing here\n")

    async def never(conn: epws.Conn) -> None:
        raise AssertionError("not reached")

    server = await epws.serve(never, "127.0.0.1", 0, process_request=process)
    async with server:
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(5):
                await epws.connect(f"ws://127.0.0.1:{server.port}/")
        assert info.value.status == 404


async def test_connection_refused() -> None:
    tcp = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    tcp.close()
    await tcp.wait_closed()
    with pytest.raises(OSError):
        async with asyncio.timeout(5):
            await epws.connect(f"ws://127.0.0.1:{port}/")


# ---------------------------------------------------------------- after the handshake


async def test_subprotocol_selected_by_server() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.send(conn.subprotocol or "none")

    server = await epws.serve(handler, "127.0.0.1", 0, subprotocols=["b", "a"])
    async with (
        server,
        epws.connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["a", "b"]) as conn,
    ):
        assert conn.subprotocol == "a"
        async with asyncio.timeout(5):
            assert await conn.recv() == "a"


async def test_frames_glued_to_the_101_are_delivered() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(
            switching(req["sec-websocket-key"])
            + frame(1, b"first", mask=False)
            + frame(2, b"second", mask=False)
        )
        await reader.read()

    async with raw_server(handler) as port:
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.5)
        async with asyncio.timeout(5):
            assert await conn.recv() == "first"
            assert await conn.recv() == b"second"
        conn.abort()


async def test_close_glued_to_the_101_then_eof() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(
            switching(req["sec-websocket-key"])
            + frame(1, b"last words", mask=False)
            + frame(8, b"\x03\xe9", mask=False)
        )
        writer.write_eof()
        await reader.read()

    async with raw_server(handler) as port:
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.5)
        got = []
        async with asyncio.timeout(5):
            async for message in conn:
                got.append(message)
        assert got == ["last words"]
        assert conn.close_code == 1001


@pytest.mark.parametrize("bad", [b"\x03\xe7", b"\x03"])  # close code 999; a 1-byte payload
async def test_bad_frame_glued_to_the_101_then_reset(bad: bytes) -> None:
    """The peer fails us, then resets TCP before we answer (Autobahn's 7.* servers do).

    Failing the connection half-closes TCP; on a socket the peer already reset that
    raises OSError. It must not escape connect(): the connection is closed, and reads
    say so at once.
    """

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(switching(req["sec-websocket-key"]) + frame(8, bad, mask=False))
        await writer.drain()
        writer.transport.abort()  # linger 0: an RST right behind the frame

    async with raw_server(handler) as port:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the race is the peer's RST against our reply: try it often
            conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=5)
            started = loop.time()
            with pytest.raises(ConnectionClosedError) as info:
                async with asyncio.timeout(4):
                    await conn.recv()
            assert loop.time() - started < 2  # not held until close_timeout
            assert info.value.sent_code == 1002
            async with asyncio.timeout(4):
                await conn.wait_closed()


def test_reset_between_our_close_frame_and_the_half_close() -> None:
    """The race Autobahn's servers hit on a busy machine, made to happen every time.

    Failing a connection sends a close frame, then half-closes TCP. A server that
    resets TCP as soon as it reads that frame can win the race to the half-close;
    asyncio's ``write_eof()`` then raises OSError (ENOTCONN) from ``shutdown()``. Here
    the real ``write_eof`` runs only once the server's reset has arrived, so the
    kernel gives that error for real. It must not escape ``connect()``.

    asyncio's own loop only: uvloop half-closes asynchronously and reports nothing.
    """
    reset_sent = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += peer.recv(4096)
            key = parse_request(head)["sec-websocket-key"]
            peer.sendall(switching(key) + frame(8, b"\x03\xe7", mask=False))  # code 999
            peer.recv(4096)  # the client's close frame (1002)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset_sent.set()  # closed with linger 0: an RST

    async def client() -> None:
        loop = asyncio.get_running_loop()
        original = loop.create_connection

        async def create_connection(*args: Any, **kwargs: Any) -> Any:
            transport, protocol = await original(*args, **kwargs)
            real_write_eof = transport.write_eof

            def write_eof_after_the_reset() -> None:
                assert reset_sent.wait(5)
                time.sleep(0.05)  # the RST crosses loopback
                real_write_eof()

            transport.write_eof = write_eof_after_the_reset  # type: ignore[method-assign]
            return transport, protocol

        loop.create_connection = create_connection  # type: ignore[method-assign]
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=5)
        started = loop.time()
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(4):
                await conn.recv()
        assert info.value.sent_code == 1002
        assert loop.time() - started < 2
        async with asyncio.timeout(4):
            await conn.wait_closed()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        asyncio.run(client())
    finally:
        thread.join(5)
        listener.close()


async def test_masked_frame_from_server_fails_1002() -> None:
    received: asyncio.Future[tuple[int, bool, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(switching(req["sec-websocket-key"]) + frame(1, b"masked", mask=True))
        received.set_result(await read_client_frame(reader))
        await reader.read()

    async with raw_server(handler) as port:
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.5)
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(5):
                await conn.recv()
        async with asyncio.timeout(5):
            opcode, _, payload = await received
        assert opcode == 8
        assert payload[:2] == b"\x03\xea"  # 1002


async def test_client_waits_for_server_to_close_tcp() -> None:
    """RFC 6455 §7.1.1: after the close handshake the server closes TCP first."""
    got_close: asyncio.Event = asyncio.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, str]
    ) -> None:
        writer.write(switching(req["sec-websocket-key"]))
        opcode, _, payload = await read_client_frame(reader)
        assert opcode == 8
        writer.write(frame(8, payload, mask=False))
        got_close.set()
        # The client must not have closed TCP yet: nothing more, no EOF, for a while.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await reader.read(1)
        writer.close()

    async with raw_server(handler) as port:
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(5):
            await conn.close(1000, "client done")
        assert got_close.is_set()
        assert 0.15 <= loop.time() - start < 2.5
        assert conn.close_code == 1000


# ---------------------------------------------------------------- TLS


async def test_wss_with_dialer_context() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def handler(conn: epws.Conn) -> None:
        async for message in conn:
            await conn.send(message)

    server = await epws.serve(handler, "127.0.0.1", 0, ssl=server_ctx)
    async with server:
        url = f"wss://localhost:{server.port}/"
        async with epws.connect(url, ssl=client_ctx) as conn:
            await conn.send("over tls")
            async with asyncio.timeout(5):
                assert await conn.recv() == "over tls"
            assert conn.transport.get_extra_info("ssl_object") is not None
        # Hostname verification: the certificate is for localhost, not 127.0.0.1.
        with pytest.raises(ssl.SSLCertVerificationError):
            await epws.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx)

"""Tests for epws.asyncio.server: serve(), the Upgrader policy, plain HTTP answers, TLS.

Requests are written by hand on raw sockets where the exact bytes matter (a huge or
slow request, a wrong version, several frames in one packet).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trustme

import epws
from epws import ConnectionClosedOK, HandshakeError

from .wsraw import RawClient, close_frame, frame, read_http_head, request_bytes

Handler = Callable[[epws.Conn], Awaitable[None]]


@asynccontextmanager
async def server_with(handler: Handler, **options: Any) -> AsyncIterator[epws.Server]:
    options.setdefault("close_timeout", 2.0)
    server = await epws.serve(handler, "127.0.0.1", 0, **options)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


async def http_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer until the server closes: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(5):
            status, headers, _ = await read_http_head(reader)
            body = await reader.read()
        return status, headers, body
    finally:
        writer.transport.abort()


# ---------------------------------------------------------------- serving and closing


async def test_server_close_sends_1001_to_all() -> None:
    server = await epws.serve(echo, "127.0.0.1", 0, close_timeout=2.0)
    port = server.port
    clients = [await epws.connect(f"ws://127.0.0.1:{port}/") for _ in range(5)]
    for client in clients:  # make sure every handler runs before closing
        await client.send("hi")
        async with asyncio.timeout(5):
            assert await client.recv() == "hi"
    assert len(server.connections) == 5
    readers = [asyncio.create_task(c.recv()) for c in clients]
    async with asyncio.timeout(10):
        await server.close()
    for task in readers:
        with pytest.raises(ConnectionClosedOK) as info:
            async with asyncio.timeout(5):
                await task
        assert (info.value.rcvd_code, info.value.rcvd_reason) == (1001, "going away")
    assert server.connections == set()
    with pytest.raises(OSError):
        await epws.connect(f"ws://127.0.0.1:{port}/", handshake_timeout=2)  # not listening


async def test_server_close_custom_code_and_context_manager() -> None:
    server = await epws.serve(echo, "127.0.0.1", 0)
    async with server:
        client = await epws.connect(f"ws://127.0.0.1:{server.port}/")
        await client.send("sync")
        async with asyncio.timeout(5):
            await client.recv()
        async with asyncio.timeout(10):
            await server.close(1012, "restarting")
        with pytest.raises(epws.ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                await client.recv()
        assert info.value.code == 1012


async def test_handler_that_ignores_close_is_cancelled_after_timeout() -> None:
    gate = asyncio.Event()

    async def stubborn(conn: epws.Conn) -> None:
        await gate.wait()  # never returns on its own

    server = await epws.serve(stubborn, "127.0.0.1", 0, close_timeout=1.0)
    client = await epws.connect(f"ws://127.0.0.1:{server.port}/")
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(10):
        await server.close(timeout=0.2)
    assert loop.time() - start < 3
    await client.close()


# ---------------------------------------------------------------- opening handshake bounds


async def test_request_too_big_gets_431() -> None:
    async with server_with(echo) as server:
        big = request_bytes(server.port, extra=[("X-Big", "a" * 70000)])[0]
        status, _, _ = await http_exchange(server.port, big)
        assert status == 431
        many = request_bytes(server.port, extra=[(f"X-{i}", "v") for i in range(200)])[0]
        status, _, _ = await http_exchange(server.port, many)
        assert status == 431


async def test_request_line_too_long_gets_414() -> None:
    async with server_with(echo) as server:
        data = request_bytes(server.port, path="/" + "a" * 9000)[0]
        status, _, _ = await http_exchange(server.port, data)
        assert status == 414


async def test_slow_request_closed_by_handshake_timeout() -> None:
    async with server_with(echo, handshake_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with asyncio.timeout(5):
                try:
                    data = await reader.read()
                except ConnectionResetError:
                    data = b""
            assert data == b""
            assert 0.25 <= loop.time() - start < 3
        finally:
            writer.transport.abort()


async def test_handshake_timeout_does_not_fire_after_upgrade() -> None:
    async with (
        server_with(echo, handshake_timeout=0.2) as server,
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        await asyncio.sleep(0.4)  # past the handshake timeout: must not matter
        await conn.send("still here")
        async with asyncio.timeout(5):
            assert await conn.recv() == "still here"


# ---------------------------------------------------------------- plain HTTP answers


async def test_process_request_plain_http() -> None:
    def process(request: epws.Request) -> epws.HTTPResponse | None:
        if request.path == "/":
            return epws.HTTPResponse(200, "<p>home</p>", content_type="text/html")
        if request.path == "/ws":
            return None
        return epws.HTTPResponse(404, "not found\n")

    async with server_with(echo, process_request=process) as server:
        get = b"GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        status, headers, body = await http_exchange(server.port, get)
        assert (status, body) == (200, b"<p>home</p>")
        assert headers["content-type"] == "text/html"
        assert headers["content-length"] == "11"
        status, _, body = await http_exchange(
            server.port, b"GET /missing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert (status, body) == (404, b"not found\n")
        # HEAD: same head, no body.
        status, headers, body = await http_exchange(
            server.port, b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert (status, body, headers["content-length"]) == (200, b"", "11")
        # The WebSocket path upgrades as usual.
        async with epws.connect(f"ws://127.0.0.1:{server.port}/ws") as conn:
            await conn.send("up")
            async with asyncio.timeout(5):
                assert await conn.recv() == "up"
        # A plain GET on the WebSocket path: 426.
        status, headers, _ = await http_exchange(
            server.port, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert status == 426


async def test_async_process_request() -> None:
    async def process(request: epws.Request) -> epws.HTTPResponse | None:
        await asyncio.sleep(0)
        if request.headers.get("X-Let-In") == "yes":
            return None
        return epws.HTTPResponse(401, "who are you?\n")

    async with server_with(echo, process_request=process) as server:
        status, _, body = await http_exchange(server.port, request_bytes(server.port)[0])
        assert (status, body) == (401, b"who are you?\n")
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/")
        assert info.value.status == 401
        async with epws.connect(
            f"ws://127.0.0.1:{server.port}/", headers=[("X-Let-In", "yes")]
        ) as conn:
            await conn.send("in")
            async with asyncio.timeout(5):
                assert await conn.recv() == "in"


async def test_process_request_error_gives_500() -> None:
    async def process(request: epws.Request) -> epws.HTTPResponse | None:
        raise RuntimeError("bug in the application")

    async with server_with(echo, process_request=process) as server:
        status, _, _ = await http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 500


async def test_non_upgrade_without_process_request_gets_426() -> None:
    async with server_with(echo) as server:
        status, headers, _ = await http_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert status == 426
        assert headers["sec-websocket-version"] == "13"
        assert headers["upgrade"].lower() == "websocket"


async def test_version_12_gets_426_with_version_13() -> None:
    async with server_with(echo) as server:
        status, headers, _ = await http_exchange(
            server.port, request_bytes(server.port, version="12")[0]
        )
        assert status == 426
        assert headers["sec-websocket-version"] == "13"


async def test_bad_key_gets_400() -> None:
    async with server_with(echo) as server:
        status, _, _ = await http_exchange(
            server.port, request_bytes(server.port, key="dG9vIHNob3J0")[0]
        )
        assert status == 400


# ---------------------------------------------------------------- origin checks


async def test_cross_origin_refused_by_default() -> None:
    async with server_with(echo) as server:
        same = f"http://127.0.0.1:{server.port}"
        async with epws.connect(f"ws://127.0.0.1:{server.port}/", origin=same) as conn:
            await conn.send("same origin")
            async with asyncio.timeout(5):
                assert await conn.recv() == "same origin"
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/", origin="https://evil.example")
        assert info.value.status == 403
        status, _, _ = await http_exchange(
            server.port,
            request_bytes(server.port, extra=[("Origin", "https://evil.example")])[0],
        )
        assert status == 403


async def test_origin_allow_list() -> None:
    allowed = ["https://chat.example", "http://localhost:3000"]
    async with server_with(echo, check_origin=allowed) as server:
        for origin in allowed:
            async with epws.connect(f"ws://127.0.0.1:{server.port}/", origin=origin):
                pass
        for origin in ["https://other.example", f"http://127.0.0.1:{server.port}"]:
            with pytest.raises(HandshakeError) as info:
                await epws.connect(f"ws://127.0.0.1:{server.port}/", origin=origin)
            assert info.value.status == 403
    async with (
        server_with(echo, check_origin=["*"]) as server,
        epws.connect(f"ws://127.0.0.1:{server.port}/", origin="https://any.example") as conn,
    ):
        assert conn.subprotocol is None


async def test_origin_callable() -> None:
    seen: list[str | None] = []

    def check(request: epws.Request) -> bool:
        origin = request.headers.get("Origin")
        seen.append(origin)
        return origin is not None and origin.endswith(".trusted.example")

    async with server_with(echo, check_origin=check) as server:
        async with epws.connect(
            f"ws://127.0.0.1:{server.port}/", origin="https://a.trusted.example"
        ):
            pass
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/")
        assert info.value.status == 403
    assert seen == ["https://a.trusted.example", None]


# ---------------------------------------------------------------- subprotocols, headers


async def test_subprotocol_negotiation_server_side() -> None:
    chosen: list[str | None] = []

    async def handler(conn: epws.Conn) -> None:
        chosen.append(conn.subprotocol)

    async with server_with(handler, subprotocols=["chat.v2", "chat.v1"]) as server:
        base = f"ws://127.0.0.1:{server.port}/"
        async with epws.connect(base, subprotocols=["chat.v1", "chat.v2"]) as conn:
            # The first protocol the client offers that the server speaks.
            assert conn.subprotocol == "chat.v1"
        async with epws.connect(base, subprotocols=["other"]) as conn:
            assert conn.subprotocol is None
        async with epws.connect(base) as conn:
            assert conn.subprotocol is None
        async with asyncio.timeout(5):
            while len(chosen) < 3:
                await asyncio.sleep(0.01)
    assert chosen == ["chat.v1", None, None]


async def test_extra_headers_in_101() -> None:
    async with (
        server_with(echo, extra_headers=[("X-Server", "epws-test")]) as server,
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        assert conn.response is not None
        assert conn.response.headers.get("X-Server") == "epws-test"


# ---------------------------------------------------------------- several frames per packet


async def test_valid_message_then_bad_frame_in_one_packet() -> None:
    """Strict behaviour: the message before the bad frame is echoed, then 1002."""
    async with server_with(echo) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(1, b"before") + frame(2, b"also before") + frame(0, b"orphan"))
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (1, True, b"before")
                assert await raw.read_frame() == (2, True, b"also before")
                code, _ = await raw.read_close()
                assert code == 1002
                assert await raw.at_eof()
        finally:
            raw.close()


async def test_valid_message_then_bad_utf8_in_one_packet() -> None:
    async with server_with(echo) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(1, b"fine") + frame(1, b"\xff"))
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (1, True, b"fine")
                code, _ = await raw.read_close()
                assert code == 1007
        finally:
            raw.close()


async def test_message_and_close_in_one_packet() -> None:
    async with server_with(echo) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(1, b"echo me") + close_frame(1000, "bye"))
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (1, True, b"echo me")
                assert await raw.read_frame() == (8, True, b"\x03\xe8")
                assert await raw.at_eof()
        finally:
            raw.close()


async def test_frames_in_the_same_packet_as_the_request() -> None:
    async with server_with(echo) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            data, _ = request_bytes(server.port)
            writer.write(data + frame(1, b"early") + close_frame(1000))
            raw = RawClient(reader, writer)
            async with asyncio.timeout(5):
                status, _, _ = await read_http_head(reader)
                assert status == 101
                assert await raw.read_frame() == (1, True, b"early")
                assert await raw.read_frame() == (8, True, b"\x03\xe8")
        finally:
            writer.transport.abort()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_wss_roundtrip(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    async with server_with(echo, ssl=server_ctx) as server:
        async with epws.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx) as conn:
            messages: list[str | bytes] = ["secure ✓", b"\x00" * 100_000]
            for message in messages:
                await conn.send(message)
                async with asyncio.timeout(5):
                    assert await conn.recv() == message
        # An untrusted certificate is refused by the default context.
        with pytest.raises(ssl.SSLError):
            await epws.connect(f"wss://127.0.0.1:{server.port}/", handshake_timeout=5)


async def test_wss_close_handshake(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts

    async def handler(conn: epws.Conn) -> None:
        await conn.close(1000, "tls bye")

    async with server_with(handler, ssl=server_ctx) as server:
        conn = await epws.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx)
        with pytest.raises(ConnectionClosedOK) as info:
            async with asyncio.timeout(5):
                await conn.recv()
        assert info.value.rcvd_reason == "tls bye"
        async with asyncio.timeout(5):
            await conn.wait_closed()


# ------------------------------------------------ closing with handshakes in flight


async def test_close_lets_no_handshake_in_flight_complete() -> None:
    """Issue 9 item 4: once close() began, no 101 is written and no handler starts.

    Three requests are in flight as close() starts: one half sent, one complete and
    waiting for a slow async process_request, one complete and read by the kernel but
    not yet by the server. After close() they are finished (the slow process_request
    returns, the half request is completed): each client gets a 503 or the
    connection closed, never a 101; the handler never runs; close() ends in bounded time.
    """
    ran: list[epws.Conn] = []
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        ran.append(conn)
        await conn.send("hello")

    async def process(request: epws.Request) -> epws.HTTPResponse | None:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return None

    server = await epws.serve(handler, "127.0.0.1", 0, process_request=process, close_timeout=2.0)
    port = server.port
    partial = await asyncio.open_connection("127.0.0.1", port)
    slow = await asyncio.open_connection("127.0.0.1", port)
    unread = await asyncio.open_connection("127.0.0.1", port)
    data, _ = request_bytes(port)
    slow_data, _ = request_bytes(port, path="/slow")
    partial[1].write(data[:-2])  # all but the final CRLF
    slow[1].write(slow_data)
    async with asyncio.timeout(5):
        await entered.wait()
        await partial[1].drain()
        await asyncio.sleep(0.05)  # the half request has been read by the server
    unread[1].write(data)  # close() starts before the loop gets to read it
    closing = asyncio.create_task(server.close(timeout=2.0))
    await asyncio.sleep(0)
    partial[1].write(b"\r\n")
    release.set()
    async with asyncio.timeout(5):
        await closing
    for reader, writer in (partial, slow, unread):
        answer = b""
        try:
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):  # all until the server closes
                    answer += chunk
        except ConnectionResetError:  # closed with our bytes unread: the kernel resets
            pass
        finally:
            writer.transport.abort()
        assert not answer.startswith(b"HTTP/1.1 101"), answer
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
    assert ran == []
    assert server.connections == set()


async def test_handler_ending_with_another_connections_close_fails_its_own() -> None:
    """Issue 9 item 5: a relay's ConnectionClosed from its target is a handler failure.

    The relay's own peer did not leave: its connection must be closed (1011), stay in
    ``server.connections`` for as long as its TCP connection is open, and not linger
    answering pings outside it.
    """
    target_conn: asyncio.Future[epws.Conn] = asyncio.get_running_loop().create_future()
    relay_conn: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        if conn.request is not None and conn.request.path == "/target":
            target_conn.set_result(conn)
            async for _ in conn:
                pass
            return
        relay_conn.append(conn)
        target = await target_conn
        async for message in conn:
            await target.send(message)  # raises once the target is gone

    async with server_with(handler) as server:
        port = server.port
        target = await epws.connect(f"ws://127.0.0.1:{port}/target")
        relay = await epws.connect(f"ws://127.0.0.1:{port}/relay")
        async with asyncio.timeout(5):
            target_side = await target_conn
            await target.close()
            await target_side.wait_closed()
        seen: list[bool] = []

        async def watch() -> None:
            while True:  # the relay's conn is in the set whenever its TCP is up
                for conn in relay_conn:
                    seen.append(conn in server.connections or conn.closed)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await relay.send("to nobody")
        with pytest.raises(epws.ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                await relay.recv()
        assert info.value.rcvd_code == 1011
        async with asyncio.timeout(5):
            await relay_conn[0].wait_closed()
        watcher.cancel()
        assert seen and all(seen)
        assert server.connections == set()

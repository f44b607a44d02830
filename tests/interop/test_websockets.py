"""Interop with the ``websockets`` library, in both directions, over 127.0.0.1.

epws server + websockets client, and websockets server + epws client: messages of
the sizes around each length encoding's boundary up to 1 MiB, fragmented messages,
ping/pong, close codes both ways, subprotocols, and a cross-origin refusal.
Compression is off on the websockets side (permessage-deflate is another issue).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.exceptions import ConnectionClosed as WsConnectionClosed, InvalidStatus

import epws
from epws import MessageType

SIZES = [0, 125, 126, 65535, 65536, 1 << 20]
WS_OPTIONS: dict[str, Any] = {"compression": None, "ping_interval": None}


def payload_bytes(size: int) -> bytes:
    return bytes(i * 31 & 0xFF for i in range(size))


def payload_text(size: int) -> str:
    # ASCII with a multi-byte character where it fits, keeping exactly `size` bytes.
    if size >= 3:
        return "€" + "a" * (size - 3)
    return "a" * size


@asynccontextmanager
async def epws_server(
    handler: Callable[[epws.Conn], Awaitable[None]], **options: Any
) -> AsyncIterator[str]:
    options.setdefault("close_timeout", 2.0)
    server = await epws.serve(handler, "127.0.0.1", 0, **options)
    try:
        yield f"ws://127.0.0.1:{server.port}/"
    finally:
        await server.close(timeout=2.0)


@asynccontextmanager
async def ws_server(
    handler: Callable[[ServerConnection], Awaitable[None]], **options: Any
) -> AsyncIterator[str]:
    async with ws_serve(handler, "127.0.0.1", 0, **WS_OPTIONS, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


def ws_client(url: str, **options: Any) -> Any:
    return ws_connect(url, proxy=None, **WS_OPTIONS, **options)


async def epws_echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


async def ws_echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize("size", SIZES)
async def test_messages_epws_server_websockets_client(size: int) -> None:
    async with epws_server(epws_echo) as url, ws_client(url) as ws:
        async with asyncio.timeout(10):
            await ws.send(payload_text(size))
            assert await ws.recv() == payload_text(size)
            await ws.send(payload_bytes(size))
            assert await ws.recv() == payload_bytes(size)


@pytest.mark.parametrize("size", SIZES)
async def test_messages_websockets_server_epws_client(size: int) -> None:
    async with ws_server(ws_echo) as url, epws.connect(url) as conn:
        async with asyncio.timeout(10):
            await conn.send(payload_text(size))
            assert await conn.recv() == payload_text(size)
            await conn.send(payload_bytes(size))
            assert await conn.recv() == payload_bytes(size)


# ---------------------------------------------------------------- fragmented messages


async def test_fragments_websockets_to_epws_and_back() -> None:
    """websockets sends an iterable as fragments; epws reassembles and answers in fragments."""

    async def handler(conn: epws.Conn) -> None:
        async for message in conn:
            async with conn.message_writer(
                MessageType.TEXT if isinstance(message, str) else MessageType.BINARY
            ) as w:
                for i in range(0, len(message), 1000):
                    await w.write(message[i : i + 1000])

    text_parts = ["é" * 500, "x" * 70000, "", "end ✓"]
    binary_parts = [b"\x01" * 10, b"\x02" * 65536, b"\x03"]
    async with epws_server(handler) as url, ws_client(url) as ws:
        async with asyncio.timeout(10):
            await ws.send(text_parts)
            fragments = [f async for f in ws.recv_streaming()]
            assert "".join(fragments) == "".join(text_parts)
            assert len(fragments) > 1  # epws really sent several frames

            async def agen() -> AsyncIterator[bytes]:
                for part in binary_parts:
                    yield part

            await ws.send(agen())
            chunks = [c async for c in ws.recv_streaming()]
            assert b"".join(chunks) == b"".join(binary_parts)
            assert len(chunks) > 1


async def test_fragments_epws_to_websockets_and_back() -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            parts = [message[i : i + 777] for i in range(0, len(message), 777)]
            await ws.send(parts)

    async with ws_server(handler) as url, epws.connect(url) as conn:
        async with asyncio.timeout(10):
            async with conn.message_writer(MessageType.TEXT) as w:
                for i in range(50):
                    await w.write(f"part {i} ✓;")
            assert await conn.recv() == "".join(f"part {i} ✓;" for i in range(50))
            async with conn.message_writer(MessageType.BINARY) as w:
                await w.write(b"a" * 70000)
                await w.write(b"b")
            assert await conn.recv() == b"a" * 70000 + b"b"


# ---------------------------------------------------------------- ping / pong


async def test_ping_pong_epws_server_websockets_client() -> None:
    ping_seen: list[bytes] = []
    ready = asyncio.Event()
    rtt: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(conn: epws.Conn) -> None:
        conn.ping_handler = ping_seen.append
        ready.set()
        rtt.set_result(await (await conn.ping(b"epws-ping")))
        async for message in conn:
            await conn.send(message)

    async with epws_server(handler) as url, ws_client(url) as ws:
        async with asyncio.timeout(10):
            await ready.wait()
            latency = await (await ws.ping(b"ws-ping"))  # epws pongs automatically
            assert latency >= 0
            await ws.send("sync")  # the client reads, so the server's ping is answered
            assert await ws.recv() == "sync"
            assert await rtt >= 0
    assert ping_seen == [b"ws-ping"]


async def test_ping_pong_websockets_server_epws_client() -> None:
    async def handler(ws: ServerConnection) -> None:
        await (await ws.ping(b"from websockets"))
        await ws.send("pong received")
        await ws_echo(ws)

    async with ws_server(handler) as url, epws.connect(url) as conn:
        pongs: list[bytes] = []
        conn.pong_handler = pongs.append
        async with asyncio.timeout(10):
            rtt = await (await conn.ping(b"from epws"))
            assert rtt >= 0
            assert await conn.recv() == "pong received"
        assert pongs == [b"from epws"]


# ---------------------------------------------------------------- close codes

CLOSES = [(1000, ""), (1001, "bye"), (3000, "app reason ✓"), (4999, "")]


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_close_websockets_client_to_epws_server(code: int, reason: str) -> None:
    seen: asyncio.Future[epws.ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def handler(conn: epws.Conn) -> None:
        try:
            await conn.recv()
        except epws.ConnectionClosed as exc:
            seen.set_result(exc)

    async with epws_server(handler) as url:
        async with asyncio.timeout(10):
            ws = await ws_client(url)
            await ws.close(code, reason)
            exc = await seen
        assert (exc.rcvd_code, exc.rcvd_reason) == (code, reason)
        assert exc.sent_code == code  # epws echoed the code
        assert isinstance(exc, epws.ConnectionClosedOK) == (code in (1000, 1001))
        assert ws.close_code == code


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_close_epws_server_to_websockets_client(code: int, reason: str) -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.close(code, reason)

    async with epws_server(handler) as url, ws_client(url) as ws:
        async with asyncio.timeout(10):
            with pytest.raises(WsConnectionClosed):
                await ws.recv()
            await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (code, reason)


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_close_epws_client_to_websockets_server(code: int, reason: str) -> None:
    seen: asyncio.Future[tuple[int | None, str | None]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        with suppress(WsConnectionClosed):
            await ws.recv()
        seen.set_result((ws.close_code, ws.close_reason))

    async with ws_server(handler) as url:
        conn = await epws.connect(url)
        async with asyncio.timeout(10):
            await conn.close(code, reason)
            assert await seen == (code, reason)
        assert conn.closed
        assert conn.close_code == code


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_close_websockets_server_to_epws_client(code: int, reason: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(code, reason)

    async with ws_server(handler) as url:
        conn = await epws.connect(url)
        with pytest.raises(epws.ConnectionClosed) as info:
            async with asyncio.timeout(10):
                await conn.recv()
        assert (info.value.rcvd_code, info.value.rcvd_reason) == (code, reason)
        async with asyncio.timeout(10):
            await conn.wait_closed()


# ---------------------------------------------------------------- subprotocols


async def test_subprotocols_epws_server_websockets_client() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.send(conn.subprotocol or "")

    async with epws_server(handler, subprotocols=["v2", "v1"]) as url:
        async with ws_client(url, subprotocols=["v1", "v2"]) as ws:
            assert ws.subprotocol == "v1"
            async with asyncio.timeout(10):
                assert await ws.recv() == "v1"
        async with ws_client(url, subprotocols=["v9"]) as ws:
            assert ws.subprotocol is None


async def test_subprotocols_websockets_server_epws_client() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(ws.subprotocol or "")

    async with ws_server(handler, subprotocols=["v2", "v1"]) as url:
        async with epws.connect(url, subprotocols=["v1", "v2"]) as conn:
            # websockets picks by its own preference order among the offered ones.
            assert conn.subprotocol in ("v1", "v2")
            async with asyncio.timeout(10):
                assert await conn.recv() == conn.subprotocol
        async with epws.connect(url, subprotocols=["v2"]) as conn:
            assert conn.subprotocol == "v2"


# ---------------------------------------------------------------- origin


async def test_cross_origin_refused_with_403() -> None:
    async with epws_server(epws_echo) as url:
        with pytest.raises(InvalidStatus) as info:
            async with asyncio.timeout(10):
                await ws_client(url, origin="https://evil.example")
        assert info.value.response.status_code == 403
        port = url.rsplit(":", 1)[1].rstrip("/")
        same = f"http://127.0.0.1:{port}"
        async with ws_client(url, origin=same) as ws:
            await ws.send("same origin")
            async with asyncio.timeout(10):
                assert await ws.recv() == "same origin"

"""permessage-deflate over real sockets: epws both ends, interop with websockets, limits.

Interop runs every setting in both directions against the ``websockets`` library,
whose permessage-deflate is an independent implementation of RFC 7692.
"""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate as WsPerMessageDeflate,
    ServerPerMessageDeflateFactory,
)

import epws
from epws.protocol.deflate import DeflateCodec

from .wsraw import RawClient, frame, read_http_head, request_bytes

TIMEOUT = 10


def corpus(n: int) -> str:
    words = [
        "alice",
        "bob",
        "joined",
        "the",
        "room",
        "hello",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "typing",
    ]
    return " ".join(f"{words[(i * 7) % len(words)]}{i % 13}" for i in range(n))


MESSAGES: list[str | bytes] = [
    "hi",
    corpus(20),
    corpus(300),
    corpus(300),  # a repeat: context takeover finds it
    corpus(5000).encode(),
    bytes(range(256)) * 64,
    b"",
    "é€😀 " * 400,
]


class Counter:
    """Counts the codec's work in this process (both ends when both are epws)."""

    def __init__(self) -> None:
        self.compress = 0
        self.decompressed_messages = 0


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    count = Counter()
    compress = DeflateCodec.compress
    decompress = DeflateCodec.decompress

    def counting_compress(self: DeflateCodec, data: bytes) -> bytes:
        count.compress += 1
        return compress(self, data)

    def counting_decompress(
        self: DeflateCodec, data: bytes, max_size: int | None, final: bool
    ) -> bytes:
        count.decompressed_messages += final
        return decompress(self, data, max_size, final)

    monkeypatch.setattr(DeflateCodec, "compress", counting_compress)
    monkeypatch.setattr(DeflateCodec, "decompress", counting_decompress)
    yield count


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


@asynccontextmanager
async def epws_server(
    handler: Callable[[epws.Conn], Awaitable[None]] = echo, **fields: Any
) -> AsyncIterator[epws.Server]:
    server = await epws.serve(handler, "127.0.0.1", 0, **fields)
    try:
        yield server
    finally:
        async with asyncio.timeout(TIMEOUT):
            await server.close()


async def ws_echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


# --------------------------------------------------------------------------- epws <-> epws


async def test_epws_both_ends_default(counter: Counter) -> None:
    async with (
        epws_server() as server,
        asyncio.timeout(TIMEOUT),
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        assert conn.response is not None
        assert conn.response.headers.get("Sec-WebSocket-Extensions") == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )
        for message in MESSAGES:
            await conn.send(message)
            assert await conn.recv() == message
    # Every message at or over the 128-byte threshold went compressed, both ways.
    big = sum(len(m.encode() if isinstance(m, str) else m) >= 128 for m in MESSAGES)
    assert counter.compress == 2 * big
    assert counter.decompressed_messages == 2 * big


async def test_compression_off_on_either_side(counter: Counter) -> None:
    async with (
        epws_server(compression=None) as server,
        asyncio.timeout(TIMEOUT),
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        assert conn.response is not None
        assert conn.response.headers.get("Sec-WebSocket-Extensions") is None
        await conn.send(corpus(300))
        assert await conn.recv() == corpus(300)
    async with (
        epws_server() as server,
        asyncio.timeout(TIMEOUT),
        epws.connect(f"ws://127.0.0.1:{server.port}/", compression=None) as conn,
    ):
        await conn.send(corpus(300))
        assert await conn.recv() == corpus(300)
    assert counter.compress == counter.decompressed_messages == 0


async def test_per_message_switch(counter: Counter) -> None:
    async def handler(conn: epws.Conn) -> None:
        message = await conn.recv()
        await conn.send(message, compress=False)
        await conn.recv()
        await conn.send(message)

    async with (
        epws_server(handler) as server,
        asyncio.timeout(TIMEOUT),
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        await conn.send(corpus(300), compress=False)
        assert await conn.recv() == corpus(300)
        assert counter.compress == 0 and counter.decompressed_messages == 0
        await conn.send("next", compress=False)
        assert await conn.recv() == corpus(300)
        assert counter.compress == 1 and counter.decompressed_messages == 1


async def handshake_status(port: int, extensions: str) -> tuple[int, str | None]:
    """Status and Sec-WebSocket-Extensions of the server's answer to a raw request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data, _ = request_bytes(port, extra=[("Sec-WebSocket-Extensions", extensions)])
        writer.write(data)
        status, headers, _ = await read_http_head(reader)
        return status, headers.get("sec-websocket-extensions")
    finally:
        writer.transport.abort()


async def test_invalid_offer_is_declined_malformed_header_is_400() -> None:
    async with epws_server() as server, asyncio.timeout(TIMEOUT):
        # RFC 7692 §5.1: a bad offer is declined; the upgrade goes on without it.
        bad = "permessage-deflate; server_max_window_bits=7"
        assert await handshake_status(server.port, bad) == (101, None)
        two = f"{bad}, permessage-deflate; client_max_window_bits"
        assert await handshake_status(server.port, two) == (
            101,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )
        # A header that does not follow the grammar is a bad request.
        status, _ = await handshake_status(server.port, "permessage-deflate;;")
        assert status == 400


# --------------------------------------------------------------------------- interop


WS_CLIENTS: list[dict[str, Any]] = [
    {},  # what websockets offers by default: client_max_window_bits
    {"server_max_window_bits": 10, "client_max_window_bits": 9},
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
    # websockets inflates with a strict 256-byte window here.
    {"server_max_window_bits": 8, "client_max_window_bits": 9},
    {"compress_settings": {"memLevel": 1, "level": 9}, "client_max_window_bits": 15},
]
EPWS_SERVERS: list[dict[str, Any]] = [
    {},
    {"server_no_context_takeover": False, "client_no_context_takeover": False},
    {
        "server_no_context_takeover": False,
        "client_no_context_takeover": False,
        "server_max_window_bits": 11,
        "client_max_window_bits": 10,
        "threshold": 0,
    },
]


@pytest.mark.parametrize("server_cfg", EPWS_SERVERS)
@pytest.mark.parametrize("client_cfg", WS_CLIENTS)
async def test_websockets_client_epws_server(
    client_cfg: dict[str, Any], server_cfg: dict[str, Any], counter: Counter
) -> None:
    pmd = epws.PerMessageDeflate(**server_cfg)
    async with (
        epws_server(compression=pmd) as server,
        asyncio.timeout(TIMEOUT),
        ws_connect(
            f"ws://127.0.0.1:{server.port}/",
            compression=None,
            extensions=[ClientPerMessageDeflateFactory(**client_cfg)],
            max_size=None,
        ) as ws,
    ):
        assert [type(e) for e in ws.protocol.extensions] == [WsPerMessageDeflate]
        for _ in range(3):
            for message in MESSAGES:
                await ws.send(message)
                assert await ws.recv() == message
    assert counter.compress > 0 and counter.decompressed_messages > 0


WS_SERVERS: list[dict[str, Any]] = [
    {},
    {"server_max_window_bits": 9, "client_max_window_bits": 8},  # strict 256 on their side
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
    {"client_max_window_bits": 10, "require_client_max_window_bits": True},
]
EPWS_CLIENTS: list[dict[str, Any]] = [
    {},
    {"server_no_context_takeover": False, "client_no_context_takeover": False},
    {
        "server_no_context_takeover": False,
        "client_no_context_takeover": False,
        "server_max_window_bits": 10,
        "client_max_window_bits": 12,
        "threshold": 0,
    },
]


@pytest.mark.parametrize("client_cfg", EPWS_CLIENTS)
@pytest.mark.parametrize("server_cfg", WS_SERVERS)
async def test_epws_client_websockets_server(
    client_cfg: dict[str, Any], server_cfg: dict[str, Any], counter: Counter
) -> None:
    extensions = [ServerPerMessageDeflateFactory(**server_cfg)]
    async with (
        ws_serve(ws_echo, "127.0.0.1", 0, compression=None, extensions=extensions) as ws_server,
        asyncio.timeout(TIMEOUT),
    ):
        port = ws_server.sockets[0].getsockname()[1]
        pmd = epws.PerMessageDeflate(**client_cfg)
        async with epws.connect(f"ws://127.0.0.1:{port}/", compression=pmd) as conn:
            assert conn.response is not None
            assert conn.response.headers.get("Sec-WebSocket-Extensions")
            for _ in range(3):
                for message in MESSAGES:
                    await conn.send(message)
                    assert await conn.recv() == message
    assert counter.compress > 0 and counter.decompressed_messages > 0


async def test_compressed_message_fragmented_across_many_frames(counter: Counter) -> None:
    """websockets compresses a fragmented message as one stream, RSV1 on frame one."""
    fragments = [corpus(50) + f" #{i} " for i in range(300)]
    async with (
        epws_server(compression=epws.PerMessageDeflate()) as server,
        asyncio.timeout(TIMEOUT),
        ws_connect(f"ws://127.0.0.1:{server.port}/", max_size=None) as ws,
    ):
        assert ws.protocol.extensions
        await ws.send(iter(fragments))
        assert await ws.recv() == "".join(fragments)
        await ws.send(iter([f.encode() for f in fragments]))
        assert await ws.recv() == "".join(fragments).encode()
    assert counter.decompressed_messages == 2


# --------------------------------------------------------------------------- limits


async def test_decompression_bomb_closes_1009_without_inflating() -> None:
    """10 MB of zeros in ~10 KB, to a server with a 1 MiB read limit."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = b"\x00" * (1 << 20)
    payload = b"".join(comp.compress(zeros) for _ in range(10))
    payload += comp.flush(zlib.Z_SYNC_FLUSH)[:-4]
    del zeros
    assert len(payload) < 20_000
    bomb = frame(2, payload, rsv=4)
    received: list[object] = []

    async def handler(conn: epws.Conn) -> None:
        try:
            received.append(await conn.recv())
        except epws.ConnectionClosed as exc:
            received.append(exc)

    async with epws_server(handler, read_limit=1 << 20) as server, asyncio.timeout(TIMEOUT):
        raw = await RawClient.connect(
            server.port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]
        )
        try:
            tracemalloc.start()
            try:
                raw.send(bomb)
                code, _ = await raw.read_close()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            raw.close()
    assert code == 1009
    assert peak < 4 << 20, peak  # the limit plus buffers; 10 MiB if inflated first
    assert len(received) == 1 and isinstance(received[0], epws.ConnectionClosed)


async def test_limit_counts_inflated_bytes_on_the_client() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.send(b"\x00" * 200_000)
        await conn.wait_closed()

    async with epws_server(handler) as server, asyncio.timeout(TIMEOUT):
        conn = await epws.connect(f"ws://127.0.0.1:{server.port}/", read_limit=100_000)
        with pytest.raises(epws.ConnectionClosed) as info:
            await conn.recv()
        assert info.value.sent_code == 1009


# --------------------------------------------------------------------------- broadcast

BROADCAST_CLIENTS = 1000


async def test_prepared_compressed_broadcast_compresses_once(counter: Counter) -> None:
    """One PreparedMessage to 1,000 compressing clients: one compression, 1,000 intact copies."""
    conns: list[epws.Conn] = []
    all_in = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        if len(conns) == BROADCAST_CLIENTS:
            all_in.set()
        await conn.wait_closed()

    text = corpus(400)
    async with epws_server(handler) as server, asyncio.timeout(60):
        url = f"ws://127.0.0.1:{server.port}/"
        clients: list[epws.Conn] = []
        for start in range(0, BROADCAST_CLIENTS, 100):  # bounded concurrency
            clients += await asyncio.gather(
                *(epws.connect(url) for _ in range(min(100, BROADCAST_CLIENTS - start)))
            )
        try:
            await all_in.wait()
            before = counter.compress
            message = epws.PreparedMessage(epws.MessageType.TEXT, text)
            assert epws.broadcast(conns, message) == []
            assert counter.compress - before == 1
            got = await asyncio.gather(*(c.recv() for c in clients))
            assert got == [text] * BROADCAST_CLIENTS
            assert counter.decompressed_messages == BROADCAST_CLIENTS
            # The same prepared message again: the cached frame, no new compression.
            epws.broadcast(conns, message)
            assert counter.compress - before == 1
            assert await asyncio.gather(*(c.recv() for c in clients[:10])) == [text] * 10
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_prepared_with_context_takeover_compresses_per_connection(
    counter: Counter,
) -> None:
    """With takeover the bytes depend on each connection's history: no sharing, still right."""
    conns: list[epws.Conn] = []
    all_in = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        if len(conns) == 3:
            all_in.set()
        await conn.wait_closed()

    pmd = epws.PerMessageDeflate(server_no_context_takeover=False)
    off = epws.PerMessageDeflate(server_no_context_takeover=False, client_no_context_takeover=False)
    async with epws_server(handler, compression=pmd) as server, asyncio.timeout(TIMEOUT):
        url = f"ws://127.0.0.1:{server.port}/"
        clients = [
            await epws.connect(url, compression=off),
            await epws.connect(url, compression=off),
            await epws.connect(url, compression=None),
        ]
        try:
            await all_in.wait()
            message = epws.PreparedMessage(epws.MessageType.BINARY, corpus(400).encode())
            for _ in range(2):
                epws.broadcast(conns, message)
            assert counter.compress == 4  # 2 compressing connections x 2 messages
            for c in clients:
                assert [await c.recv(), await c.recv()] == [message.data] * 2
        finally:
            await asyncio.gather(*(c.close() for c in clients))

"""Callback mode: a plain-function handler, on_message/on_close, send_nowait, close_nowait."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import epws

from .wsraw import RawClient, close_frame, frame


@asynccontextmanager
async def callback_server(
    on_connect: Callable[[epws.Conn], None], **fields: Any
) -> AsyncIterator[epws.Server]:
    fields.setdefault("close_timeout", 2.0)
    server = await epws.serve(on_connect, "127.0.0.1", 0, **fields)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


def url(server: epws.Server) -> str:
    return f"ws://127.0.0.1:{server.port}/"


async def test_echo_in_order_without_a_task_per_connection() -> None:
    conns: list[epws.Conn] = []

    def on_connect(conn: epws.Conn) -> None:
        conns.append(conn)
        conn.on_message = conn.send_nowait

    async with callback_server(on_connect) as server:
        tasks_before = len(asyncio.all_tasks())
        async with epws.connect(url(server)) as client:
            # No handler task was created for the connection.
            assert len(asyncio.all_tasks()) == tasks_before
            messages: list[str | bytes] = [f"m{i}" for i in range(200)] + [b"\x00" * 70000]
            for message in messages:
                await client.send(message)
            async with asyncio.timeout(10):
                got = [await client.recv() for _ in messages]
            assert got == messages
            assert server.connections == set(conns)
            with pytest.raises(epws.InvalidState):
                await conns[0].recv()
        async with asyncio.timeout(5):
            await conns[0].wait_closed()
        assert not server.connections  # forgotten once closed


async def test_on_close_once_with_the_close_code() -> None:
    closes: list[epws.ConnectionClosed] = []

    def on_connect(conn: epws.Conn) -> None:
        conn.on_message = lambda message: None
        conn.on_close = closes.append

    async with callback_server(on_connect) as server:
        client = await epws.connect(url(server))
        await client.close(4001, "bye")
        async with asyncio.timeout(5):
            while not closes:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert len(closes) == 1
    assert isinstance(closes[0], epws.ConnectionClosedError)
    assert (closes[0].code, closes[0].reason) == (4001, "bye")


async def test_a_raising_callback_closes_with_1011() -> None:
    def on_connect(conn: epws.Conn) -> None:
        def on_message(message: str | bytes) -> None:
            raise RuntimeError("application bug")

        conn.on_message = on_message

    async with callback_server(on_connect) as server, epws.connect(url(server)) as client:
        await client.send("boom")
        async with asyncio.timeout(5):
            with pytest.raises(epws.ConnectionClosedError) as info:
                await client.recv()
    assert info.value.code == 1011


async def test_close_nowait_from_the_callback() -> None:
    def on_connect(conn: epws.Conn) -> None:
        conn.on_message = lambda message: conn.close_nowait(4000, f"got {message!r}")

    async with callback_server(on_connect) as server, epws.connect(url(server)) as client:
        await client.send("x")
        async with asyncio.timeout(5):
            with pytest.raises(epws.ConnectionClosed) as info:
                await client.recv()
    assert (info.value.code, info.value.reason) == (4000, "got 'x'")


async def test_read_deadline_drops_the_connection_and_says_why() -> None:
    closes: list[epws.ConnectionClosed] = []

    def on_connect(conn: epws.Conn) -> None:
        conn.on_message = lambda message: None
        conn.on_close = closes.append
        conn.set_read_deadline(conn.loop.time() + 0.2)

    async with callback_server(on_connect) as server:
        raw = await RawClient.connect(server.port)
        try:
            async with asyncio.timeout(5):
                assert await raw.at_eof()
        finally:
            raw.close()
    assert len(closes) == 1
    assert "read deadline exceeded" in closes[0].cause


async def test_a_peer_that_sends_and_never_reads_is_not_buffered_without_bound() -> None:
    """Echo to a peer that never reads: reading stops once the write buffer is full."""
    write_limit = 32 * 1024
    conns: list[epws.Conn] = []
    peak = 0

    def on_connect(conn: epws.Conn) -> None:
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
        )
        conns.append(conn)

        def on_message(message: str | bytes) -> None:
            nonlocal peak
            conn.send_nowait(message)
            peak = max(peak, conn.buffered_amount)

        conn.on_message = on_message

    async with callback_server(on_connect, write_limit=write_limit) as server:
        raw = await RawClient.connect(server.port, rcvbuf=8192)
        try:
            chunk = frame(2, b"\xab" * 4096)  # 4 KiB binary, masked
            sent = 0
            # The kernel buffers fill, then the server stops reading, then our own
            # writes back up: a bounded loop that ends when the writer stalls.
            async with asyncio.timeout(20):
                for _ in range(5000):  # 20 MB if nothing pushed back
                    raw.send(chunk)
                    sent += 1
                    if raw.writer.transport.get_write_buffer_size() > 1 << 20:
                        break
                    await asyncio.sleep(0)
            assert sent < 5000, "the server kept reading from a peer that never reads"
            assert conns[0].buffered_amount <= peak
            # The replies held in the server are bounded near the write limit (plus
            # the replies to one socket read).
            assert peak < write_limit + 256 * 1024
        finally:
            raw.close()


async def test_item8_raising_on_message_still_handles_the_close_in_the_same_chunk() -> None:
    """on_message raises for a message that shares a packet with a pong and the
    peer's close frame: the pong still reaches its handler, the server closes with
    1011 and, having the peer's close, ends the handshake at once instead of waiting
    ``close_timeout`` for it."""
    closes: list[epws.ConnectionClosed] = []
    pongs: list[bytes] = []

    def on_connect(conn: epws.Conn) -> None:
        def on_message(message: str | bytes) -> None:
            raise RuntimeError("handler bug")

        conn.on_message = on_message
        conn.on_close = closes.append
        conn.pong_handler = pongs.append

    async with callback_server(on_connect, close_timeout=5.0) as server:
        raw = await RawClient.connect(server.port)
        try:
            loop = asyncio.get_running_loop()
            raw.send(frame(1, b"a") + frame(1, b"b") + frame(10, b"late") + close_frame(1000))
            start = loop.time()
            async with asyncio.timeout(3):
                code, _ = await raw.read_close()
                assert await raw.at_eof()
            assert code == 1011
            assert loop.time() - start < 2.5
            async with asyncio.timeout(2):
                while not closes:
                    await asyncio.sleep(0.01)
            assert len(closes) == 1 and closes[0].rcvd_code == 1000
            assert pongs == [b"late"]
        finally:
            raw.close()


@pytest.mark.parametrize("count", [3, 100])
async def test_on_message_set_after_connect_gets_the_queued_messages(count: int) -> None:
    """A client can only set on_message once connect() has returned: what arrived
    before (3 messages: queued; 100: the queue full, the rest held as wire bytes) is
    handed to it in order, then what comes later. Before the fix none of it was."""
    more = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        for i in range(count):
            await conn.send(f"early {i}")
        await more.wait()
        await conn.send("late")
        await conn.wait_closed()

    server = await epws.serve(handler, "127.0.0.1", 0, close_timeout=2.0)
    try:
        conn = await epws.connect(url(server), max_queue=16)
        await asyncio.sleep(0.3)  # the early messages arrive (or fill the queue)
        got: list[str | bytes] = []
        conn.on_message = got.append
        assert got[:16] == [f"early {i}" for i in range(min(count, 16))]
        more.set()
        async with asyncio.timeout(10):
            while len(got) < count + 1:
                await asyncio.sleep(0.01)
        assert got == [f"early {i}" for i in range(count)] + ["late"]
        await conn.close()
    finally:
        await server.close(timeout=2.0)


async def test_on_message_set_after_the_peer_closed_gets_messages_then_the_close() -> None:
    """Messages queued before the peer's close frame: delivered, then the close ends."""

    async def handler(conn: epws.Conn) -> None:
        await conn.send("a")
        await conn.send("b")
        await conn.close()

    server = await epws.serve(handler, "127.0.0.1", 0, close_timeout=2.0)
    try:
        conn = await epws.connect(url(server))
        await asyncio.sleep(0.3)
        got: list[str | bytes] = []
        closed: asyncio.Future[epws.ConnectionClosed] = asyncio.get_running_loop().create_future()
        conn.on_close = closed.set_result
        conn.on_message = got.append
        exc = await asyncio.wait_for(closed, 5)
        assert got == ["a", "b"]
        assert isinstance(exc, epws.ConnectionClosedOK) and exc.rcvd_code == 1000
    finally:
        await server.close(timeout=2.0)

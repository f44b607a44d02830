"""Tests for epws.asyncio.conn: Conn over real sockets on 127.0.0.1.

Each test starts a server on port 0 and connects to it, with epws's client or with
the raw peer of :mod:`tests.asyncio.wsraw` when the peer has to misbehave (never
read, never answer a close). Every wait is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import epws
from epws import ConcurrencyError, ConnectionClosedError, ConnectionClosedOK, MessageType

from .wsraw import RawClient, close_frame, frame

Handler = Callable[[epws.Conn], Awaitable[None]]


@asynccontextmanager
async def server_with(handler: Handler, **fields: Any) -> AsyncIterator[epws.Server]:
    fields.setdefault("close_timeout", 2.0)
    server = await epws.serve(handler, "127.0.0.1", 0, **fields)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


class Capture:
    """Hands the server-side Conn to the test and keeps its handler alive until told."""

    def __init__(self) -> None:
        self.conn: asyncio.Future[epws.Conn] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()

    async def handler(self, conn: epws.Conn) -> None:
        self.conn.set_result(conn)
        await self.release.wait()


def url(server: epws.Server) -> str:
    return f"ws://127.0.0.1:{server.port}/"


# ---------------------------------------------------------------- read / write


async def test_text_and_binary_roundtrip() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        messages: list[str | bytes] = ["", "héllo ✓", "x" * 70000, b"", b"\x00\xff" * 40000]
        for message in messages:
            await conn.send(message)
            async with asyncio.timeout(5):
                assert await conn.recv() == message
        await conn.write_message(MessageType.TEXT, "via write_message")
        await conn.write_message(MessageType.BINARY, b"bin")
        async with asyncio.timeout(5):
            assert await conn.read_message() == (MessageType.TEXT, "via write_message")
            assert await conn.read_message() == (MessageType.BINARY, b"bin")
        await conn.send(bytearray(b"ba"))
        await conn.send(memoryview(b"mv"))
        async with asyncio.timeout(5):
            assert await conn.recv() == b"ba"
            assert await conn.recv() == b"mv"


async def test_async_for_ends_quietly_on_clean_close() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.send("one")
        await conn.send("two")
        await conn.close(1000, "done")

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        got = []
        async with asyncio.timeout(5):
            async for message in conn:
                got.append(message)
        assert got == ["one", "two"]
        assert conn.close_code == 1000
        async with asyncio.timeout(5):
            await conn.wait_closed()
        with pytest.raises(ConnectionClosedOK):
            await conn.recv()


async def test_async_for_raises_on_error_close() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.send("one")
        await conn.close(4000, "app error")

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        got = []
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                async for message in conn:
                    got.append(message)
        assert got == ["one"]
        assert info.value.code == 4000
        assert info.value.reason == "app error"


async def test_async_for_raises_on_abort() -> None:
    async def handler(conn: epws.Conn) -> None:
        conn.abort()

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                async for _ in conn:
                    pass
        assert info.value.code == 1006
        assert conn.close_code == 1006


async def test_handler_exception_closes_1011() -> None:
    async def handler(conn: epws.Conn) -> None:
        raise RuntimeError("boom")

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                await conn.recv()
        assert info.value.code == 1011


# ---------------------------------------------------------------- concurrency contract


async def test_two_concurrent_readers() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        first = asyncio.create_task(conn.recv())
        await asyncio.sleep(0)  # let the first reader start waiting
        with pytest.raises(ConcurrencyError):
            await conn.recv()
        await conn.send("for the first reader")
        async with asyncio.timeout(5):
            assert await first == "for the first reader"
        # Reading sequentially afterwards is fine.
        await conn.send("again")
        async with asyncio.timeout(5):
            assert await conn.recv() == "again"


async def test_write_while_other_task_has_message_writer() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        opened = asyncio.Event()
        finish = asyncio.Event()

        async def fragmented() -> None:
            async with conn.message_writer(MessageType.TEXT) as w:
                await w.write("a")
                await w.write("b")
                opened.set()
                await finish.wait()
                await w.write("c")

        task = asyncio.create_task(fragmented())
        async with asyncio.timeout(5):
            await opened.wait()
        with pytest.raises(ConcurrencyError):
            await conn.send("interleaved")
        with pytest.raises(ConcurrencyError):
            await conn.write_message(MessageType.BINARY, b"x")
        with pytest.raises(ConcurrencyError):
            await conn.write_prepared(epws.PreparedMessage(MessageType.TEXT, "p"))
        with pytest.raises(ConcurrencyError):
            async with conn.message_writer(MessageType.BINARY):
                pass
        finish.set()
        async with asyncio.timeout(5):
            await task
            assert await conn.recv() == "abc"
        await conn.send("after")
        async with asyncio.timeout(5):
            assert await conn.recv() == "after"


async def test_ping_and_close_allowed_during_message_writer() -> None:
    """The contract: close() and ping() may be called from any task at any time."""
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        opened = asyncio.Event()
        finish = asyncio.Event()

        async def fragmented() -> None:
            async with conn.message_writer(MessageType.TEXT) as w:
                await w.write("a")
                await w.write("b")
                opened.set()
                await finish.wait()

        task = asyncio.create_task(fragmented())
        async with asyncio.timeout(5):
            await opened.wait()
            waiter = await conn.ping(b"mid-message")
            finish.set()
            await task
            assert await conn.recv() == "ab"
            assert await waiter >= 0


async def test_writers_from_many_tasks_never_interleave() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        payloads = [bytes([i]) * (1000 + 5000 * i) for i in range(20)]
        async with asyncio.timeout(10):
            await asyncio.gather(*(conn.send(p) for p in payloads))
            got = [await conn.recv() for _ in payloads]
        assert sorted(got) == sorted(payloads)


async def test_message_writer_sends_fragments() -> None:
    async def handler(conn: epws.Conn) -> None:
        async with conn.message_writer(MessageType.BINARY) as w:
            for chunk in (b"ab", b"cd", b"ef"):
                await w.write(chunk)
        async with conn.message_writer(MessageType.TEXT) as w:
            await w.write("only")
        await conn.recv()

    async with server_with(handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            async with asyncio.timeout(5):
                frames = [await raw.read_frame() for _ in range(4)]
            assert frames == [
                (2, False, b"ab"),
                (0, False, b"cd"),
                (0, True, b"ef"),
                (1, True, b"only"),
            ]
        finally:
            raw.close()


async def test_message_writer_reassembled_by_epws_client() -> None:
    async def handler(conn: epws.Conn) -> None:
        async with conn.message_writer(MessageType.TEXT) as w:
            for i in range(100):
                await w.write(f"{i},")
        await conn.recv()

    async with server_with(handler) as server, epws.connect(url(server)) as conn:
        async with asyncio.timeout(5):
            assert await conn.recv() == "".join(f"{i}," for i in range(100))


# ---------------------------------------------------------------- prepared messages


async def test_prepared_message_to_many_connections() -> None:
    cap: list[epws.Conn] = []
    ready = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        cap.append(conn)
        if len(cap) == 10:
            ready.set()
        await conn.wait_closed()

    async with server_with(handler) as server:
        clients = [await epws.connect(url(server)) for _ in range(10)]
        async with asyncio.timeout(5):
            await ready.wait()
        pm = epws.PreparedMessage(MessageType.TEXT, "to everyone ✓")
        for conn in cap[:5]:
            await conn.write_prepared(pm)
        for conn in cap[5:]:
            conn.write_prepared_nowait(pm)
        assert epws.broadcast(cap, b"binary to all") == []
        async with asyncio.timeout(5):
            for client in clients:
                assert await client.recv() == "to everyone ✓"
                assert await client.recv() == b"binary to all"
        await cap[0].close()
        async with asyncio.timeout(5):
            await clients[0].wait_closed()
        assert epws.broadcast(cap, "after close") == [cap[0]]
        for client in clients:
            await client.close()


async def test_prepared_message_from_client_is_masked() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        pm = epws.PreparedMessage(MessageType.BINARY, b"prepared")
        await conn.write_prepared(pm)
        await conn.write_prepared(pm)
        async with asyncio.timeout(5):
            assert await conn.recv() == b"prepared"
            assert await conn.recv() == b"prepared"


# ---------------------------------------------------------------- ping / pong


async def test_ping_rtt_and_pong_handler() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        pongs: list[bytes] = []
        conn.pong_handler = pongs.append
        waiter = await conn.ping(b"id-1")
        async with asyncio.timeout(5):
            rtt = await waiter
        assert isinstance(rtt, float)
        assert 0 <= rtt < 5
        assert pongs == [b"id-1"]
        # No payload given: a unique one is made.
        waiter = await conn.ping()
        async with asyncio.timeout(5):
            await waiter
        assert len(pongs) == 2 and len(pongs[1]) == 4
        # An empty payload is sent as it is (gorilla's chat pings are empty).
        waiter = await conn.ping(b"")
        async with asyncio.timeout(5):
            await waiter
        assert pongs[2] == b""
        for _ in range(2):  # a refused ping leaves nothing behind
            with pytest.raises(ValueError):
                await conn.ping(bytes(126))


async def test_ping_handler_and_server_ping() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server, epws.connect(url(server)) as client:
        pings: list[bytes] = []
        client.ping_handler = pings.append
        sconn = await cap.conn
        async with asyncio.timeout(5):
            rtt = await (await sconn.ping(b"from server"))
        assert rtt >= 0
        assert pings == [b"from server"]
        cap.release.set()


async def test_repeated_ping_payload_shares_the_waiting_future() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            first = await sconn.ping(b"same")
            second = await sconn.ping(b"same")  # e.g. an empty keepalive ping, again
            assert second is first
            async with asyncio.timeout(5):
                for _ in range(2):  # both pings went out
                    opcode, _, payload = await raw.read_frame()
                    assert (opcode, payload) == (9, b"same")
                raw.send(frame(10, b"same"))
                assert await first >= 0
        finally:
            raw.close()
            cap.release.set()


async def test_ping_future_fails_when_connection_drops() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server:
        raw = await RawClient.connect(server.port)
        sconn = await cap.conn
        waiter = await sconn.ping(b"never answered")
        raw.close()
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(5):
                await waiter
        cap.release.set()


# ---------------------------------------------------------------- deadlines


async def test_read_deadline_raises_and_stays_failed() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server, epws.connect(url(server)) as client:
        sconn = await cap.conn
        loop = asyncio.get_running_loop()
        client.set_read_deadline(loop.time() + 0.1)
        async with asyncio.timeout(5):
            with pytest.raises(TimeoutError):
                await client.recv()
        # A message that arrives after the deadline does not revive reading.
        await sconn.send("late")
        await sconn.ping(b"sync")  # its pong proves "late" reached the client first
        async with asyncio.timeout(5):
            while not len(client._inbound):
                await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await client.recv()
        cap.release.set()


async def test_read_deadline_cleared_and_moved() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        loop = asyncio.get_running_loop()
        conn.set_read_deadline(loop.time() + 0.05)
        conn.set_read_deadline(None)  # cleared before it fires
        conn.set_read_deadline(loop.time() + 5)  # moved far away
        await conn.send("ok")
        async with asyncio.timeout(5):
            assert await conn.recv() == "ok"


async def test_write_deadline_with_peer_that_does_not_read() -> None:
    cap = Capture()
    async with server_with(cap.handler, write_limit=16384) as server:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        try:
            sconn = await cap.conn
            sock = sconn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            loop = asyncio.get_running_loop()
            sconn.set_write_deadline(loop.time() + 0.3)
            chunk = bytes(8192)
            start = loop.time()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    for _ in range(100_000):
                        await sconn.send(chunk)
            assert loop.time() - start < 5
            async with asyncio.timeout(5):
                await sconn.wait_closed()  # a timed-out write drops the connection
            assert sconn.closed
        finally:
            raw.close()
            cap.release.set()


# ---------------------------------------------------------------- flow control


async def test_writer_waits_for_slow_reader_and_resumes() -> None:
    cap = Capture()
    write_limit = 32 * 1024
    chunk = bytes(range(256)) * 32  # 8 KiB
    count = 400  # 3.2 MB: far more than the socket buffers hold
    async with server_with(cap.handler, write_limit=write_limit) as server:
        raw = await RawClient.connect(server.port, rcvbuf=8192)
        try:
            sconn = await cap.conn
            sock = sconn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            progress = {"sent": 0, "max_buffered": 0}

            async def writer() -> None:
                for _ in range(count):
                    await sconn.send(chunk)
                    progress["sent"] += 1
                    progress["max_buffered"] = max(progress["max_buffered"], sconn.buffered_amount)

            task = asyncio.create_task(writer())
            # The writer must stall: it cannot finish while nobody reads.
            done, _ = await asyncio.wait({task}, timeout=0.5)
            assert not done
            stalled_at = progress["sent"]
            assert stalled_at < count
            # The transport buffer stays near the high-water mark, not growing: at most
            # the mark plus the frame that crossed it (with slack for one more frame, as
            # the loops account partial socket sends slightly differently).
            bound = write_limit + 2 * len(chunk)
            assert sconn.buffered_amount <= bound
            assert progress["max_buffered"] <= bound
            done, _ = await asyncio.wait({task}, timeout=0.2)
            assert not done and progress["sent"] == stalled_at
            # The reader starts: the writer resumes and everything arrives intact.
            async with asyncio.timeout(20):
                for _ in range(count):
                    opcode, fin, payload = await raw.read_frame()
                    assert (opcode, fin, payload) == (2, True, chunk)
                await task
            assert progress["max_buffered"] <= bound
        finally:
            raw.close()
            cap.release.set()


async def test_reading_pauses_when_unread_messages_pile_up() -> None:
    cap = Capture()
    max_queue = 4
    size = 16 * 1024
    async with server_with(cap.handler, max_queue=max_queue) as server:
        # Uncompressed: the flood's repetitive payloads would deflate to a few bytes.
        client = await epws.connect(url(server), write_limit=16 * 1024, compression=None)
        sconn = await cap.conn
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for i in range(2000):  # 32 MB if nothing pushed back
                await client.send(bytes([i & 0xFF]) * size)
                sent += 1

        task = asyncio.create_task(flood())
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done, "the flood should be stopped by backpressure"
        assert not sconn.transport.is_reading()
        # One read chunk (<= 256 KiB) may complete several messages past max_queue.
        bound = max_queue + (256 * 1024) // size + 1
        queued = len(sconn._inbound)
        assert max_queue <= queued <= bound
        stalled_at = sent
        done, _ = await asyncio.wait({task}, timeout=0.2)
        assert not done
        assert sent == stalled_at and len(sconn._inbound) == queued
        # The handler reads: reading resumes and the flood completes, in order.
        async with asyncio.timeout(30):
            for i in range(2000):
                assert await sconn.recv() == bytes([i & 0xFF]) * size
                assert len(sconn._inbound) <= bound
            await task
        await client.close()
        cap.release.set()


async def test_close_while_reading_is_paused() -> None:
    """close() must complete its handshake even when unread messages paused reading."""
    cap = Capture()
    async with server_with(cap.handler, max_queue=2, close_timeout=3.0) as server:
        client = await epws.connect(url(server))
        sconn = await cap.conn
        for _ in range(10):
            await client.send("x" * 100)
        async with asyncio.timeout(5):
            while sconn.transport.is_reading():
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        reader = asyncio.create_task(_drain_client(client))
        async with asyncio.timeout(5):
            await sconn.close(1000, "bye")
        elapsed = loop.time() - start
        with pytest.raises(ConnectionClosedOK):
            async with asyncio.timeout(5):
                await reader
        assert sconn._protocol.close_rcvd is not None, "server never read the close reply"
        assert elapsed < 1.0
        cap.release.set()


async def _drain_client(conn: epws.Conn) -> None:
    while True:
        await conn.recv()


# ---------------------------------------------------------------- closing


async def test_close_initiated_by_client_with_code_and_reason() -> None:
    result: asyncio.Future[epws.ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def handler(conn: epws.Conn) -> None:
        try:
            await conn.recv()
        except epws.ConnectionClosed as exc:
            result.set_result(exc)

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        async with asyncio.timeout(5):
            await conn.close(3001, "client says bye")
            exc = await result
        assert isinstance(exc, ConnectionClosedError)  # 3001 is not a "clean" code
        assert (exc.rcvd_code, exc.rcvd_reason) == (3001, "client says bye")
        assert exc.sent_code == 3001  # the server echoed the code
        assert conn.closed and conn.close_code == 3001


async def test_close_initiated_by_server_with_code_and_reason() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.close(1001, "server going away")

    async with server_with(handler) as server:
        conn = await epws.connect(url(server))
        with pytest.raises(ConnectionClosedOK) as info:
            async with asyncio.timeout(5):
                await conn.recv()
        assert (info.value.rcvd_code, info.value.rcvd_reason) == (1001, "server going away")
        assert info.value.sent_code == 1001
        async with asyncio.timeout(5):
            await conn.wait_closed()


async def test_close_without_code() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.recv()

    async with server_with(handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(close_frame(None))
            async with asyncio.timeout(5):
                assert await raw.read_close() == (None, "")
                assert await raw.at_eof()
        finally:
            raw.close()


async def test_close_is_idempotent_and_send_after_close_raises() -> None:
    async with server_with(echo) as server:
        conn = await epws.connect(url(server))
        async with asyncio.timeout(5):
            await conn.close()
            await conn.close()
        with pytest.raises(epws.ConnectionClosed):
            await conn.send("too late")


async def test_close_timeout_against_peer_that_never_answers() -> None:
    cap = Capture()
    async with server_with(cap.handler, close_timeout=0.3) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with asyncio.timeout(5):
                await sconn.close(1000)
            elapsed = loop.time() - start
            assert 0.25 <= elapsed < 2
            assert sconn.closed
            async with asyncio.timeout(5):
                assert await raw.read_close() == (1000, "")
                assert await raw.at_eof()
        finally:
            raw.close()
            cap.release.set()


async def test_client_close_timeout_against_server_that_never_answers() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from epws.protocol.handshake import accept_key

        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode()
            + b"\r\n\r\n"
        )
        accepted.append(writer)

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        conn = await epws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(5):
            await conn.close(1000)
        assert 0.25 <= loop.time() - start < 2
        assert conn.closed
    finally:
        for w in accepted:
            w.transport.abort()
        tcp.close()
        await tcp.wait_closed()


async def test_peer_close_answered_after_queued_messages() -> None:
    """A message and a close in one packet: the message is delivered, then the reply."""
    got: list[object] = []

    async def handler(conn: epws.Conn) -> None:
        try:
            async for message in conn:
                got.append(message)
        finally:
            got.append(conn.close_code)

    async with server_with(handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(1, b"one") + frame(2, b"two") + close_frame(1000, "done"))
            async with asyncio.timeout(5):
                assert await raw.read_close() == (1000, "")
                assert await raw.at_eof()
        finally:
            raw.close()
    assert got == ["one", b"two", 1000]


async def test_read_limit_closes_1009() -> None:
    async with server_with(echo, read_limit=1000) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(2, bytes(1000)))
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (2, True, bytes(1000))
            # Only the header of a too-big message: refused before its payload.
            raw.send(frame(2, bytes(1001))[:8])
            async with asyncio.timeout(5):
                code, _ = await raw.read_close()
            assert code == 1009
        finally:
            raw.close()


async def test_read_limit_settable_on_conn() -> None:
    async def handler(conn: epws.Conn) -> None:
        assert conn.read_limit == 1 << 20
        conn.read_limit = 10
        async for message in conn:
            await conn.send(message)

    async with server_with(handler) as server, epws.connect(url(server)) as conn:
        await conn.send(b"0123456789")
        async with asyncio.timeout(5):
            assert await conn.recv() == b"0123456789"
        await conn.send(b"0123456789A")
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(5):
                await conn.recv()
        assert info.value.code == 1009


async def test_conn_attributes() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server, epws.connect(url(server) + "path?q=1") as c:
        sconn = await cap.conn
        assert sconn.request is not None and sconn.request.path == "/path"
        assert c.response is not None
        assert sconn.remote_address[0] == "127.0.0.1"
        assert c.remote_address[1] == server.port
        assert sconn.close_code is None and not sconn.closed
        assert sconn.subprotocol is None
        assert sconn.buffered_amount == 0
        assert sconn in server.connections
        cap.release.set()


async def test_message_writer_body_raises_mid_message_closes_1011() -> None:
    cap = Capture()
    async with server_with(cap.handler) as server, epws.connect(url(server)) as conn:
        sconn = await cap.conn
        with pytest.raises(ValueError):
            async with conn.message_writer(MessageType.TEXT) as w:
                await w.write("a")
                await w.write("b")  # "a" is on the wire as a non-final frame
                raise ValueError("application bug mid-message")
        # A truncated message must never be delivered as whole: the connection closes.
        with pytest.raises(epws.ConnectionClosed):
            await conn.send("next")
        async with asyncio.timeout(5):
            with pytest.raises(epws.ConnectionClosed) as info:
                await sconn.recv()
        assert info.value.rcvd_code == 1011
        cap.release.set()


async def test_message_writer_body_raises_before_any_frame_keeps_connection() -> None:
    async with server_with(echo) as server, epws.connect(url(server)) as conn:
        with pytest.raises(ValueError):
            async with conn.message_writer(MessageType.TEXT) as w:
                await w.write("held back until the next write or the end")
                raise ValueError("application bug before anything was sent")
        await conn.send("next")
        async with asyncio.timeout(5):
            assert await conn.recv() == "next"


# ---------------------------------------------------------------- issue 9 findings


async def test_item6_broadcast_reaches_all_after_one_read_deadline_expired() -> None:
    """One connection's read deadline passed, then it closed: a broadcast to it and to
    others still reaches every other one, and reports that one instead of raising."""
    loop = asyncio.get_running_loop()
    conns: list[epws.Conn] = []
    timed_out = asyncio.Event()
    release = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        if len(conns) == 1:
            conn.set_read_deadline(loop.time() + 0.05)
            with pytest.raises(TimeoutError):
                await conn.recv()
            timed_out.set()
        await release.wait()

    async with server_with(handler) as server:
        clients = []
        for n in range(1, 5):
            clients.append(await epws.connect(url(server)))
            async with asyncio.timeout(5):
                while len(conns) < n:
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await timed_out.wait()
            # Its peer leaves: the connection is closed, after a read that timed out.
            await clients[0].close()
            await conns[0].wait_closed()
        failed = epws.broadcast(conns, "to everyone")
        assert failed == [conns[0]]
        async with asyncio.timeout(5):
            for client in clients[1:]:
                assert await client.recv() == "to everyone"
        release.set()
        for client in clients:
            await client.close()


async def test_item7_no_data_frame_inside_a_fragmented_message_on_the_wire() -> None:
    """While a message_writer is open, prepared messages, broadcast and send are
    refused; the peer sees the fragmented message whole, then the next message."""
    cap = Capture()
    opened = asyncio.Event()
    finish = asyncio.Event()

    refused: list[str] = []

    async def handler(conn: epws.Conn) -> None:
        async with conn.message_writer(MessageType.TEXT) as w:
            await w.write("a")
            await w.write("b")
            # From the writer's own task too (a handler that broadcasts meanwhile).
            prepared = epws.PreparedMessage(MessageType.TEXT, "own")
            try:
                conn.write_prepared_nowait(prepared)
            except ConcurrencyError:
                refused.append("prepared")
            try:
                await conn.send("own")
            except ConcurrencyError:
                refused.append("send")
            refused.extend("broadcast" for _ in epws.broadcast([conn], prepared))
            opened.set()
            await finish.wait()
            await w.write("c")
        await conn.send("after")
        await cap.handler(conn)

    async with server_with(handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            async with asyncio.timeout(5):
                await opened.wait()
            sconn = await asyncio.wait_for(cap.conn, 0.01) if cap.conn.done() else None
            assert sconn is None
            (sconn,) = server.connections
            prepared = epws.PreparedMessage(MessageType.TEXT, "p")
            with pytest.raises(ConcurrencyError):
                sconn.write_prepared_nowait(prepared)
            with pytest.raises(ConcurrencyError):
                await sconn.write_prepared(prepared)
            with pytest.raises(ConcurrencyError):
                await sconn.send("x")
            assert epws.broadcast([sconn], "y") == [sconn]
            finish.set()
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (1, False, b"a")
                assert await raw.read_frame() == (0, False, b"b")
                assert await raw.read_frame() == (0, True, b"c")
                assert await raw.read_frame() == (1, True, b"after")
            assert refused == ["prepared", "send", "broadcast"]
            assert not sconn.closed
        finally:
            raw.close()
            cap.release.set()


async def test_item8_raising_ping_and_pong_handlers_lose_nothing() -> None:
    """A ping_handler and a pong_handler that raise: logged, and the rest of the
    chunk (messages, the pong) is handled; the connection stays usable."""
    got: list[str | bytes] = []
    done = asyncio.Event()

    def boom(payload: bytes) -> None:
        raise RuntimeError("handler bug")

    async def handler(conn: epws.Conn) -> None:
        conn.ping_handler = boom
        conn.pong_handler = boom
        got.append(await conn.recv())
        got.append(await conn.recv())
        await conn.send("still here")
        await done.wait()

    async with server_with(handler) as server:
        raw = await RawClient.connect(server.port)
        try:
            raw.send(frame(9, b"p1") + frame(1, b"a") + frame(10, b"x") + frame(1, b"b"))
            async with asyncio.timeout(5):
                assert await raw.read_frame() == (10, True, b"p1")
                assert await raw.read_frame() == (1, True, b"still here")
            assert got == ["a", "b"]
        finally:
            done.set()
            raw.close()


async def test_item10_each_raise_after_close_is_fresh_and_chained() -> None:
    """recv() after the close raises a new exception each time, chained to the stored
    one, whose traceback does not grow with the number of raises."""

    async def handler(conn: epws.Conn) -> None:
        await conn.close(1000, "bye")

    async with server_with(handler) as server:
        client = await epws.connect(url(server))
        async with asyncio.timeout(5):
            await client.wait_closed()
        seen: list[BaseException] = []
        depths: set[int] = set()
        for _ in range(50):
            with pytest.raises(ConnectionClosedOK) as info:
                await client.recv()
            exc = info.value
            assert exc.rcvd_code == 1000
            depths.add(len(traceback.extract_tb(exc.__traceback__)))
            seen.append(exc)
        assert len(depths) == 1, f"traceback depth grew: {sorted(depths)}"
        assert len({id(e) for e in seen}) == 50
        causes = {id(e.__cause__) for e in seen}
        assert len(causes) == 1 and seen[0].__cause__ is not None


def _tcp_states(port: int) -> list[str]:
    """Kernel TCP states (hex, as /proc/net/tcp has them) of sockets bound to ``port``."""
    states = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    states.append(fields[3])
    return states


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
async def test_abort_resets_and_leaves_no_send_queue_behind() -> None:
    """abort() on a connection whose peer does not read: the peer gets a reset, and
    the server's socket does not linger in FIN-WAIT-1 holding its unsent data."""
    cap = Capture()
    async with server_with(cap.handler, compression=None) as server:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        try:
            sconn = await cap.conn
            sconn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            for _ in range(64):
                sconn.send_nowait(bytes(16 * 1024))  # 1 MiB the peer never reads
            await asyncio.sleep(0.1)
            assert sconn.buffered_amount > 0
            sconn.abort()
            await asyncio.wait_for(sconn.wait_closed(), 5)
            await asyncio.sleep(0.1)
            assert "04" not in _tcp_states(server.port), "FIN-WAIT-1 with a send queue"
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(5):
                    while await raw.reader.read(1 << 16):
                        pass
        finally:
            raw.close()
            cap.release.set()


# ------------------------------------------------------------ freed when done


def _conns_in_memory() -> int:
    """Conn objects the collector tracks: live ones and, with it off, cyclic garbage."""
    return sum(1 for o in gc.get_objects() if type(o) is epws.Conn)


@pytest.mark.parametrize("mode", ["callback", "reader"])
@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_a_finished_connection_is_freed_without_the_cyclic_collector(
    mode: str, ending: str
) -> None:
    """No reference cycle keeps a connection: once TCP is gone and nothing refers to it,
    reference counting frees it, and its buffers with it. With the collector off, a
    cycle would keep every one of them (the queue's back-reference once did, and the
    callback mode's usual ``conn.on_message = conn.send_nowait`` does until TCP goes)."""
    made = 0

    async def reader(conn: epws.Conn) -> None:
        nonlocal made
        made += 1
        async for message in conn:
            await conn.send(message)

    def callback(conn: epws.Conn) -> None:
        nonlocal made
        made += 1
        conn.on_message = conn.send_nowait

    server = await epws.serve(callback if mode == "callback" else reader, "127.0.0.1", 0)
    gc.collect()
    before = _conns_in_memory()
    gc.disable()
    try:
        for _ in range(20):
            client = await RawClient.connect(server.port)
            client.send(frame(2, b"ping me"))
            assert await client.read_frame() == (2, True, b"ping me")
            if ending == "close":
                client.send(close_frame(1000))
                assert (await client.read_close())[0] == 1000
                assert await client.at_eof()
            client.close()
        async with asyncio.timeout(5):
            while server.connections:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the handler tasks end, the loop drops its callbacks
        kept = _conns_in_memory() - before
        assert made == 20 and kept == 0, f"{kept} of {made} connections kept"
    finally:
        gc.enable()
        await server.close()


async def test_a_client_connection_is_freed_without_the_cyclic_collector() -> None:
    async def echo(conn: epws.Conn) -> None:
        async for message in conn:
            await conn.send(message)

    server = await epws.serve(echo, "127.0.0.1", 0)
    gc.collect()
    before = _conns_in_memory()
    gc.disable()
    try:
        for _ in range(10):
            async with epws.connect(f"ws://127.0.0.1:{server.port}/") as client:
                await client.send("hello")
                assert await client.recv() == "hello"
            del client
        async with asyncio.timeout(5):
            while server.connections:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        kept = _conns_in_memory() - before
        assert kept == 0, f"{kept} of 20 connections (10 each side) kept"
    finally:
        gc.enable()
        await server.close()

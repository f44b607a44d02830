"""The inbound side of a Conn under attack: memory, back-pressure and the end of a connection.

Each test drives a real epws server over loopback with a hand-rolled peer
(:mod:`.wsraw`) that misbehaves on purpose, and asserts a stated bound (bytes, seconds,
messages) rather than an example; each one names the finding of issue 9 it guards.
Memory is measured with :mod:`tracemalloc` in this process (the server's Python heap,
zlib's buffers included, since zlib allocates through Python's raw allocator).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import socket
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import epws
from epws import ConnectionClosedOK
from epws.protocol.handshake import accept_key

from .wsraw import RawClient, close_frame, frame, read_http_head, request_bytes

MiB = 1 << 20
DEFLATE = [("Sec-WebSocket-Extensions", "permessage-deflate; client_no_context_takeover")]


@asynccontextmanager
async def server_with(handler: Any, **fields: Any) -> AsyncIterator[epws.Server]:
    fields.setdefault("close_timeout", 2.0)
    server = await epws.serve(handler, "127.0.0.1", 0, **fields)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


class Capture:
    """Hands the server-side Conn to the test; its handler waits until released."""

    def __init__(self) -> None:
        self.conn: asyncio.Future[epws.Conn] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()

    async def handler(self, conn: epws.Conn) -> None:
        self.conn.set_result(conn)
        await self.release.wait()


def queued(conn: epws.Conn) -> int:
    """Messages waiting unread in the server's queue."""
    return len(conn._inbound)


def zero_masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame with the all-zero mask: legal, and the payload goes as it is."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


@contextlib.contextmanager
def traced() -> Iterator[list[int]]:
    """Trace allocations; the list gets the peak growth (bytes) over the start."""
    gc.collect()
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result: list[int] = []
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1] - base)
        if not was:
            tracemalloc.stop()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------- item 12


@functools.cache
def _zeros_deflated() -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(bytes(MiB - 64)) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def bomb(i: int) -> bytes:
    """The frame of message ``i`` (see :func:`bomb_message`): about 1 KB deflated.

    Its 2-byte index is deflated on its own, then a full flush (no back-reference
    crosses it), so the megabyte of zeros is deflated once for all the messages.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(i.to_bytes(2, "big")) + comp.flush(zlib.Z_FULL_FLUSH)
    return zero_masked(2, head + _zeros_deflated(), rsv=4)


def bomb_message(i: int) -> bytes:
    return i.to_bytes(2, "big") + bytes(MiB - 64)


async def test_item12_compressed_burst_inflates_no_further_than_the_queue() -> None:
    """252 messages of ~1 KB on the wire, ~1 MiB each inflated, in one burst, to a
    handler that does not read: the server inflates no more than its queue holds.
    Then the handler reads them all, intact and in order: holding input loses nothing.
    """
    count = 252
    max_queue = 16
    wire = b"".join(bomb(i) for i in range(count))
    assert len(wire) < 300 * 1024  # about what one read may bring
    cap = Capture()
    async with server_with(cap.handler, max_queue=max_queue) as server:
        raw = await RawClient.connect(server.port, extra=DEFLATE)
        try:
            sconn = await cap.conn
            assert sconn._protocol.codec is not None, "permessage-deflate not negotiated"
            with traced() as peak:
                raw.send(wire)
                await raw.writer.drain()
                await wait_until(lambda: queued(sconn) >= max_queue)
                await asyncio.sleep(0.3)  # give a server that reads on the time to
                assert not sconn.transport.is_reading()
            # max_queue messages queued, one being inflated, zlib's output buffer.
            print(f"item 12: server grew {peak[0] / MiB:.1f} MiB")
            assert peak[0] < (max_queue + 4) * MiB, f"grew {peak[0] / MiB:.1f} MiB"
            async with asyncio.timeout(20):
                for i in range(count):
                    message = await sconn.recv()
                    assert message == bomb_message(i), f"message {i} lost or damaged"
                    assert queued(sconn) <= max_queue
            assert sconn.transport.is_reading()
            raw.send(close_frame(1000))
            assert await asyncio.wait_for(raw.read_close(), 5) == (1000, "")
        finally:
            raw.close()
            cap.release.set()


async def test_item12_callback_mode_inflates_a_burst_batch_by_batch() -> None:
    """Callback mode has no queue, but a read is still not inflated whole before the
    first message is handed on: at most ``max_queue`` messages are alive at once."""
    count = 252
    max_queue = 16
    wire = b"".join(bomb(i) for i in range(count))
    got: list[bytes] = []
    conns: list[epws.Conn] = []

    def on_connect(conn: epws.Conn) -> None:
        conns.append(conn)

        def on_message(message: str | bytes) -> None:
            assert isinstance(message, bytes)
            got.append(message[:2] if message == bomb_message(int.from_bytes(message[:2])) else b"")

        conn.on_message = on_message

    async with server_with(on_connect, max_queue=max_queue) as server:
        raw = await RawClient.connect(server.port, extra=DEFLATE)
        try:
            await wait_until(lambda: conns)
            with traced() as peak:
                raw.send(wire)
                await raw.writer.drain()
                await wait_until(lambda: len(got) == count, timeout=20)
            print(f"item 12, callback mode: server grew {peak[0] / MiB:.1f} MiB")
            assert peak[0] < (max_queue + 4) * MiB, f"grew {peak[0] / MiB:.1f} MiB"
            assert got == [i.to_bytes(2, "big") for i in range(count)]
        finally:
            raw.close()


async def test_callback_mode_under_write_pressure_holds_input_and_loses_nothing() -> None:
    """An echo in callback mode to a peer that sends a burst and does not read yet:
    parsing stops (the input stays held) once the write buffer is over its mark, so
    the echoes held stay near ``write_limit``, not a whole read's worth; once the
    peer reads, every echo arrives, in order."""
    write_limit = 16 * 1024
    max_queue = 16
    size = 200
    count = 2000
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

    async with server_with(on_connect, write_limit=write_limit, compression=None) as server:
        raw = await RawClient.connect(server.port, rcvbuf=8192)
        try:
            await wait_until(lambda: conns)
            messages = [i.to_bytes(4, "big") * (size // 4) for i in range(count)]
            raw.send(b"".join(zero_masked(2, m) for m in messages))
            await asyncio.sleep(0.5)  # the server parses, echoes, and stops
            # The write limit, then at most one batch of echoes past it.
            bound = write_limit + max_queue * (size + 4)
            assert peak <= bound, f"held {peak} bytes of echoes (bound {bound})"
            async with asyncio.timeout(20):
                for i, message in enumerate(messages):
                    assert await raw.read_frame() == (2, True, message), f"echo {i}"
            assert conns[0].buffered_amount <= bound
        finally:
            raw.close()


# ---------------------------------------------------------------- item 1


async def test_item1_pipelined_upgrade_data_keeps_backpressure() -> None:
    """20 frames in the same packet as the upgrade request, then a flood, to a handler
    that does not read: reading pauses and stays paused, the queue never passes
    ``max_queue``; the handler then gets every message, in order."""
    max_queue = 16
    cap = Capture()
    async with server_with(cap.handler, max_queue=max_queue, compression=None) as server:
        raw = await RawClient.connect(server.port, upgrade=False)
        try:
            messages = [i.to_bytes(4, "big") * 256 for i in range(2020)]  # 1 KiB each
            request, _ = request_bytes(server.port)
            raw.send(request + b"".join(zero_masked(2, m) for m in messages[:20]))
            status, _, _ = await asyncio.wait_for(read_http_head(raw.reader), 5)
            assert status == 101
            sconn = await cap.conn
            raw.send(b"".join(zero_masked(2, m) for m in messages[20:]))
            most = 0
            for _ in range(50):  # 0.5 s of a handler that does not read
                most = max(most, queued(sconn))
                await asyncio.sleep(0.01)
            assert most <= max_queue, f"{most} messages queued (max_queue {max_queue})"
            assert not sconn.transport.is_reading()
            async with asyncio.timeout(20):
                for i, message in enumerate(messages):
                    assert await sconn.recv() == message, f"message {i}"
                    assert queued(sconn) <= max_queue
        finally:
            raw.close()
            cap.release.set()


@pytest.mark.parametrize("hook", ["none", "sync", "async"])
async def test_frames_behind_the_request_and_during_the_hook_all_arrive(hook: str) -> None:
    """Reading pauses only while an async hook runs: frames in the request's packet, and
    (async hook) frames sent while the hook waits, all reach the handler, in order, and
    reading goes on afterwards."""
    cap = Capture()
    asked = asyncio.Event()

    def sync_hook(request: object) -> None:
        return None

    async def async_hook(request: object) -> None:
        asked.set()
        await asyncio.sleep(0.2)

    hooks = {"none": None, "sync": sync_hook, "async": async_hook}
    async with server_with(cap.handler, process_request=hooks[hook], compression=None) as server:
        raw = await RawClient.connect(server.port, upgrade=False)
        try:
            messages = [bytes([i]) * 100 for i in range(9)]
            request, _ = request_bytes(server.port)
            raw.send(request + b"".join(zero_masked(2, m) for m in messages[:3]))
            if hook == "async":
                await asyncio.wait_for(asked.wait(), 5)
                raw.send(b"".join(zero_masked(2, m) for m in messages[3:6]))
            status, _, _ = await asyncio.wait_for(read_http_head(raw.reader), 5)
            assert status == 101
            sconn = await cap.conn
            if hook != "async":
                raw.send(b"".join(zero_masked(2, m) for m in messages[3:6]))
            raw.send(b"".join(zero_masked(2, m) for m in messages[6:]))
            async with asyncio.timeout(5):
                got = [await sconn.recv() for _ in messages]
            assert got == messages
            assert sconn.transport.is_reading()
        finally:
            raw.close()
            cap.release.set()


# ---------------------------------------------------------------- item 2


async def test_item2_peer_ignoring_our_close_costs_no_memory() -> None:
    """Our close frame is out; the peer ignores it and floods messages: the server
    reads on (to see a close frame or EOF) but keeps nothing, and drops TCP at
    ``close_timeout``."""
    close_timeout = 1.5
    cap = Capture()
    async with server_with(
        cap.handler, max_queue=16, close_timeout=close_timeout, compression=None
    ) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            loop = asyncio.get_running_loop()
            sconn.close_nowait(1000, "bye")  # before the flood: nothing is queued
            closing = asyncio.create_task(sconn.wait_closed())
            start = loop.time()
            chunk = b"".join(zero_masked(2, bytes(1024)) for _ in range(100))
            most = 0
            with traced() as peak:
                while not sconn.closed and loop.time() - start < close_timeout + 3:
                    raw.send(chunk)  # 100 KiB, 100 messages, every 10 ms
                    most = max(most, queued(sconn))
                    await asyncio.sleep(0.01)
                    with contextlib.suppress(ConnectionError):
                        await raw.reader.read(1 << 16)  # our close frame, then EOF
            async with asyncio.timeout(5):
                await closing
            elapsed = loop.time() - start
            assert most == 0, f"{most} messages kept after our close frame"
            assert peak[0] < 2 * MiB, f"grew {peak[0] / MiB:.1f} MiB"
            assert sconn.closed and elapsed < close_timeout + 1.5
        finally:
            raw.close()
            cap.release.set()


# ---------------------------------------------------------------- item 3


async def test_item3_ping_flood_from_a_peer_that_never_reads_recv_mode() -> None:
    """A ping flood from a peer with a tiny receive window that never reads, to a
    handler in recv mode: the pongs held by the server stay within twice the write
    limit (reading pauses; only the latest ping is answered, RFC 6455 §5.5.3)."""
    write_limit = 16 * 1024
    cap = Capture()
    async with server_with(cap.handler, write_limit=write_limit) as server:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        try:
            sconn = await cap.conn
            sconn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            ping = zero_masked(9, bytes(125))
            burst = ping * 100  # 13 KiB
            most = 0
            async with asyncio.timeout(20):
                for _ in range(400):  # 5 MiB of pings if nothing pushed back
                    raw.send(burst)
                    most = max(most, sconn.buffered_amount)
                    if raw.writer.transport.get_write_buffer_size() > MiB:
                        break  # the server stopped reading: the flood backs up here
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.2)
            most = max(most, sconn.buffered_amount)
            assert most <= 2 * write_limit, f"{most} bytes of pongs held"
            assert not sconn.closed
        finally:
            raw.close()
            cap.release.set()


# ---------------------------------------------------------------- item 9


async def test_item9_peer_close_behind_unread_messages_is_answered_in_time() -> None:
    """Messages and a close frame in one packet, to a handler that never reads: the
    close is answered and TCP closed within ``close_timeout``; the app can still read
    the messages, then gets ConnectionClosedOK."""
    close_timeout = 1.0
    cap = Capture()
    async with server_with(cap.handler, close_timeout=close_timeout) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            loop = asyncio.get_running_loop()
            messages = [f"m{i}" for i in range(5)]
            raw.send(b"".join(frame(1, m.encode()) for m in messages) + close_frame(1000, "done"))
            start = loop.time()
            async with asyncio.timeout(close_timeout + 4):
                assert await raw.read_close() == (1000, "")
                assert await raw.at_eof()
            assert loop.time() - start < close_timeout + 1.5
            async with asyncio.timeout(5):
                await sconn.wait_closed()
                assert [await sconn.recv() for _ in messages] == messages
                with pytest.raises(ConnectionClosedOK):
                    await sconn.recv()
            assert sconn.close_code == 1000
        finally:
            raw.close()
            cap.release.set()


async def test_held_close_frame_is_seen_when_we_close() -> None:
    """The peer's close frame sits in input held for room (the queue is full); the app
    closes: the held input is parsed at once and the handshake ends without waiting
    for ``close_timeout``."""
    cap = Capture()
    async with server_with(cap.handler, max_queue=4, close_timeout=5.0) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            raw.send(b"".join(frame(1, b"x") for _ in range(10)) + close_frame(1000))
            await wait_until(lambda: queued(sconn) >= 4)
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with asyncio.timeout(3):
                await sconn.close(1001)
            assert loop.time() - start < 2.5
            assert sconn.close_code == 1000
            assert await asyncio.wait_for(raw.read_close(), 2) == (1001, "")
        finally:
            raw.close()
            cap.release.set()


# ---------------------------------------------------------------- item 13


def _send_blocking(port: int, wire: bytes) -> None:
    """Upgrade, send ``wire`` and a ping from a thread (no byte of ``wire`` is copied
    in Python), and return once the pong is back: the server has parsed it all."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        request, _ = request_bytes(port)
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(wire)
        sock.sendall(zero_masked(9, b"sync"))
        rest = head.partition(b"\r\n\r\n")[2]
        while len(rest) < 6:
            rest += sock.recv(4096)
        assert rest[:6] == b"\x8a\x04sync", rest


async def test_item13_tiny_fragments_cost_about_the_read_limit() -> None:
    """An unfinished message of 2-byte fragments under the read limit: the server's
    memory grows by the payload and one read (at most twice the read limit), not by
    28 times the payload. (A quarter of the limit: tracemalloc makes each of the
    32,768 frames slow to parse.)"""
    read_limit = 256 * 1024
    payload = 64 * 1024  # fragments: 2 bytes each, 32,768 frames
    first = zero_masked(2, b"ab", fin=False)
    cont = zero_masked(0, b"ab", fin=False)
    wire = first + cont * (payload // 2 - 1)
    cap = Capture()
    async with server_with(cap.handler, read_limit=read_limit, compression=None) as server:
        with traced() as peak:
            await asyncio.wait_for(asyncio.to_thread(_send_blocking, server.port, wire), 90)
        await cap.conn
        print(f"item 13: server grew {peak[0] / 1024:.0f} KiB for {payload // 1024} KiB")
        assert peak[0] < 2 * read_limit, f"grew {peak[0] / 1024:.0f} KiB"
        cap.release.set()


# ---------------------------------------------------------------- the end behind held input


async def test_client_reads_everything_held_before_eof_then_the_close() -> None:
    """A server sends its 101, more messages than the client's queue takes, its close
    frame and FIN, all at once: the client holds what its queue cannot take (maybe
    told of the EOF meanwhile), and still delivers every message, then a clean close
    (1000)."""
    messages = [f"m{i}" for i in range(20)]

    async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        response = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
        ).encode()
        body = b"".join(frame(1, m.encode(), mask=False) for m in messages)
        writer.write(response + body + close_frame(1000, "done", mask=False))
        writer.write_eof()
        await reader.read()  # the client's close reply, then its EOF
        writer.close()

    tcp = await asyncio.start_server(raw_server, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        client = await epws.connect(f"ws://127.0.0.1:{port}/", max_queue=4, compression=None)
        # Whether the client saw the EOF with the 101 (then it is told of it while it
        # holds input) or sees it later, the app gets the same: everything, in order.
        print("EOF before the first read:", client.closed)
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in messages]
            with pytest.raises(ConnectionClosedOK) as info:
                await client.recv()
        assert got == messages
        assert info.value.rcvd_code == 1000
        assert client.close_code == 1000
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_server_delivers_held_messages_after_tcp_is_gone() -> None:
    """The peer sends more messages than the queue takes and its close frame, then
    resets TCP while the server holds that input: nothing received is lost (every
    message is read, then the close frame's code is reported)."""
    messages = [f"m{i}" for i in range(20)]
    cap = Capture()
    async with server_with(cap.handler, max_queue=4, compression=None) as server:
        raw = await RawClient.connect(server.port)
        sconn = await cap.conn
        raw.send(b"".join(frame(1, m.encode()) for m in messages) + close_frame(1000))
        await raw.writer.drain()
        await wait_until(lambda: queued(sconn) >= 4)
        assert sconn._inbound.held and not sconn.transport.is_reading()
        sock = raw.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # a reset
        await asyncio.sleep(0.05)
        with contextlib.suppress(epws.ConnectionClosed):
            for _ in range(5):  # the write that finds the reset
                await sconn.send("are you there?")
                await asyncio.sleep(0.05)
        async with asyncio.timeout(5):
            await sconn.wait_closed()
            got = [await sconn.recv() for _ in messages]
            with pytest.raises(epws.ConnectionClosed) as info:
                await sconn.recv()
        assert got == messages
        assert info.value.rcvd_code == 1000
        cap.release.set()


async def test_control_frames_in_held_input_go_through_the_same_dispatch() -> None:
    """A ping and a pong sit behind messages the full queue cannot take: they are
    handled in order once the reader makes room (the pong reaches its handler, the
    ping gets its answer), and the messages around them all arrive."""
    messages = [f"m{i}" for i in range(12)]
    cap = Capture()
    async with server_with(cap.handler, max_queue=4, compression=None) as server:
        raw = await RawClient.connect(server.port)
        try:
            sconn = await cap.conn
            pongs: list[bytes] = []
            sconn.pong_handler = pongs.append
            wire = [frame(1, m.encode()) for m in messages]
            wire.insert(8, frame(9, b"held ping") + frame(10, b"held pong"))
            raw.send(b"".join(wire))
            await wait_until(lambda: queued(sconn) >= 4)
            await asyncio.sleep(0.1)
            assert sconn._inbound.held and not pongs
            async with asyncio.timeout(5):
                got = [await sconn.recv() for _ in messages]
                assert await raw.read_frame() == (10, True, b"held ping")
            assert got == messages
            assert pongs == [b"held pong"]
            assert sconn.transport.is_reading()
        finally:
            raw.close()
            cap.release.set()

"""Keepalive (issue 13 item 1): pings on the loop's deadline queue, 1011 for a dead peer.

Every test runs over real sockets on loopback. A "dead" peer is a raw socket that did
the opening handshake and then never answers a ping (it may or may not read); a live
peer is epws itself. Bounds are in seconds of the loop clock, with slack for a loaded
machine, and always well below what would pass without keepalive (nothing would ever
close the connection).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import epws
from epws.asyncio.conn import KEEPALIVE_PAYLOAD
from epws.protocol import Protocol, Side
from epws.protocol.handshake import accept_key

from .wsraw import RawClient, frame

pytestmark = pytest.mark.asyncio

INTERVAL = 0.2
TIMEOUT = 0.3
SLACK = 1.5  # a loaded machine's timers run late; still far below "never"


async def _frames_until_close(
    read_frame: Any, pings: list[bytes], *, limit: int = 1000
) -> tuple[int | None, str]:
    """Read frames, noting ping payloads, up to the close frame: its code and reason."""
    for _ in range(limit):
        opcode, _, payload = await read_frame()
        if opcode == 9:
            pings.append(payload)
        elif opcode == 8:
            if not payload:
                return None, ""
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    raise AssertionError("no close frame")


# ---------------------------------------------------------------- server side


class _ServerSide:
    """An epws server in one of three styles; records how and when each conn ended."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.ended: asyncio.Future[tuple[float, epws.ConnectionClosed]] = (
            asyncio.get_running_loop().create_future()
        )

    def _end(self, exc: epws.ConnectionClosed) -> None:
        if not self.ended.done():
            self.ended.set_result((asyncio.get_running_loop().time(), exc))

    def handler(self) -> Any:
        if self.mode == "callback":

            def on_connect(conn: epws.Conn) -> None:
                conn.on_message = lambda _m: None
                conn.on_close = self._end

            return on_connect

        async def handler(conn: epws.Conn) -> None:
            try:
                if self.mode == "reading":
                    async for _ in conn:
                        pass
                else:  # an app that never reads: only waits for the end
                    await conn.wait_closed()
                await conn.recv()
            except epws.ConnectionClosed as exc:
                self._end(exc)

        return handler


@pytest.mark.parametrize("mode", ["reading", "not-reading", "callback"])
async def test_server_closes_a_dead_client_with_1011(mode: str) -> None:
    side = _ServerSide(mode)
    server = await epws.serve(
        side.handler(), "127.0.0.1", 0, ping_interval=INTERVAL, ping_timeout=TIMEOUT
    )
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        raw = await RawClient.connect(server.port)
        pings: list[bytes] = []
        async with asyncio.timeout(INTERVAL + TIMEOUT + SLACK):
            code, reason = await _frames_until_close(raw.read_frame, pings)
            when, exc = await side.ended
            assert await raw.at_eof()  # TCP went too, without waiting for our close
        assert code == 1011 and "keepalive" in reason
        assert pings == [KEEPALIVE_PAYLOAD]  # one ping, never a pile of them
        assert exc.sent_code == 1011 and exc.rcvd_code is None
        assert "keepalive ping timeout" in exc.cause
        # Not before the ping had its whole timeout.
        assert when - start >= INTERVAL + TIMEOUT - 0.05
        raw.close()
    finally:
        await server.close(timeout=2.0)


async def test_server_closes_a_dead_client_that_does_not_even_read() -> None:
    """The dead client's socket takes nothing off the wire: TCP still goes in time."""
    side = _ServerSide("reading")
    server = await epws.serve(
        side.handler(), "127.0.0.1", 0, ping_interval=INTERVAL, ping_timeout=TIMEOUT
    )
    try:
        raw = await RawClient.connect(server.port)
        async with asyncio.timeout(INTERVAL + TIMEOUT + SLACK):
            _, exc = await side.ended
        assert exc.sent_code == 1011
        raw.close()
    finally:
        await server.close(timeout=2.0)


async def test_pings_do_not_pile_up_under_write_pressure() -> None:
    """A client that reads nothing while the server writes: still one ping in flight."""
    sent = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        for _ in range(32):
            conn.send_nowait(b"x" * 65536)  # 2 MiB: far over the write limit
        sent.set()
        await conn.wait_closed()

    server = await epws.serve(handler, "127.0.0.1", 0, ping_interval=0.05, ping_timeout=30)
    try:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        await asyncio.wait_for(sent.wait(), 10)
        await asyncio.sleep(0.6)  # a dozen intervals with nothing read
        pings = 0
        data = 0
        async with asyncio.timeout(20):
            while data < 32:
                opcode, _, _ = await raw.read_frame()
                if opcode == 9:
                    pings += 1
                elif opcode == 2:
                    data += 1
        assert pings <= 1
        raw.close()
    finally:
        await server.close(timeout=2.0)


async def test_ping_interval_none_sends_no_ping() -> None:
    conns: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        await conn.wait_closed()

    server = await epws.serve(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        raw = await RawClient.connect(server.port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.6):
                await raw.reader.read(1)
        assert conns and not conns[0].closed and conns[0].latency is None
        raw.close()
    finally:
        await server.close(timeout=2.0)


# ---------------------------------------------------------------- client side


async def _read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames are masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    data = await reader.readexactly(n) if n else b""
    return b0 & 0x0F, bool(b0 & 0x80), bytes(b ^ key[i % 4] for i, b in enumerate(data))


@asynccontextmanager
async def _dead_server(
    result: asyncio.Future[tuple[int | None, list[bytes], bool]],
) -> AsyncIterator[int]:
    """A server that upgrades, then reads frames and never answers a ping."""
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode()
            + b"\r\n\r\n"
        )
        writer.write(frame(1, b"hello", mask=False))
        pings: list[bytes] = []
        try:
            code, _ = await _frames_until_close(lambda: _read_client_frame(reader), pings)
            eof = await reader.read(1) == b""
        except (asyncio.IncompleteReadError, ConnectionError):
            code, eof = -1, True
        if not result.done():
            result.set_result((code, pings, eof))

    tcp = await asyncio.start_server(on_client, "127.0.0.1", 0)
    try:
        yield tcp.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.transport.abort()
        tcp.close()
        await tcp.wait_closed()


@pytest.mark.parametrize("mode", ["reading", "not-reading", "callback"])
async def test_client_closes_a_dead_server_with_1011(mode: str) -> None:
    loop = asyncio.get_running_loop()
    result: asyncio.Future[tuple[int | None, list[bytes], bool]] = loop.create_future()
    async with _dead_server(result) as port:
        start = loop.time()
        conn = await epws.connect(
            f"ws://127.0.0.1:{port}/", ping_interval=INTERVAL, ping_timeout=TIMEOUT
        )
        ended: asyncio.Future[epws.ConnectionClosed] = loop.create_future()
        got: list[str | bytes] = []
        async with asyncio.timeout(INTERVAL + TIMEOUT + SLACK):
            if mode == "callback":
                conn.on_close = ended.set_result
                conn.on_message = got.append
                exc = await ended
            else:
                if mode == "reading":
                    got.append(await conn.recv())
                await conn.wait_closed()
                with pytest.raises(epws.ConnectionClosedError) as info:
                    while True:
                        got.append(await conn.recv())
                exc = info.value
            code, pings, eof = await result
        elapsed = loop.time() - start
        assert got == ["hello"]
        assert exc.sent_code == 1011 and "keepalive ping timeout" in exc.cause
        assert code == 1011 and eof
        assert pings == [KEEPALIVE_PAYLOAD]
        assert elapsed >= INTERVAL + TIMEOUT - 0.05


# ---------------------------------------------------------------- live peers


async def test_live_peers_stay_open_and_measure_latency() -> None:
    """Both sides ping each other for many intervals; nothing closes; latency is set."""
    server_conns: list[epws.Conn] = []
    pongs: list[bytes] = []

    async def handler(conn: epws.Conn) -> None:
        server_conns.append(conn)
        async for message in conn:
            await conn.send(message)

    server = await epws.serve(handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.5)
    try:
        conn = await epws.connect(
            f"ws://127.0.0.1:{server.port}/", ping_interval=0.1, ping_timeout=0.5
        )
        conn.pong_handler = pongs.append
        assert conn.latency is None  # no pong yet
        for _ in range(10):  # ten intervals, with some traffic
            await asyncio.sleep(0.1)
            await conn.send("x")
            assert await asyncio.wait_for(conn.recv(), 5) == "x"
        assert not conn.closed and not server_conns[0].closed
        assert conn.latency is not None and 0 <= conn.latency < 0.5
        assert server_conns[0].latency is not None
        # interval < timeout: a ping every interval, not every timeout.
        assert pongs.count(KEEPALIVE_PAYLOAD) >= 4
        # The application's own pings still resolve, empty ones (the chat's) included.
        for payload in (None, b"", b"app"):
            rtt = await asyncio.wait_for(await conn.ping(payload), 5)
            assert rtt >= 0
        await conn.close()
        assert conn.close_code == 1000
    finally:
        await server.close(timeout=2.0)


async def test_keepalive_and_read_deadline_share_one_entry() -> None:
    """The chat's pattern: a read deadline pushed on by every pong, keepalive's included."""
    loop = asyncio.get_running_loop()

    async def handler(conn: epws.Conn) -> None:
        await conn.wait_closed()

    server = await epws.serve(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        conn = await epws.connect(
            f"ws://127.0.0.1:{server.port}/", ping_interval=0.1, ping_timeout=0.5
        )

        def on_pong(_payload: bytes) -> None:
            conn.set_read_deadline(loop.time() + 0.4)

        conn.pong_handler = on_pong
        conn.set_read_deadline(loop.time() + 0.4)
        # Pongs keep pushing the deadline: the read only ends when pongs stop being
        # asked for, long after the first deadline.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await conn.recv()  # the outer timeout, not the read deadline
        assert not conn.closed
        conn.pong_handler = None
        start = loop.time()
        conn.set_read_deadline(start + 0.2)
        with pytest.raises(TimeoutError, match="read deadline"):
            await asyncio.wait_for(conn.recv(), 5)
        assert loop.time() - start < 0.2 + SLACK
        await conn.close()
    finally:
        await server.close(timeout=2.0)


async def test_keepalive_parameters_are_checked() -> None:
    """Caught when the connection is made, before it touches any socket."""
    bad: tuple[float, float | None]
    for bad in ((0, None), (1, -1)):
        with pytest.raises(ValueError, match="positive"):
            epws.Conn(Protocol(Side.CLIENT), ping_interval=bad[0], ping_timeout=bad[1])


# ---------------------------------------------------------------- the ping payload


async def test_server_ping_payload_is_configurable_and_shared() -> None:
    """``ping_payload=b""``: the empty pings of gorilla's chat, latency still measured;
    every connection of the server shares the one settings object (no per-connection
    copy: memory per connection, issue 9)."""
    conns: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        await conn.wait_closed()

    server = await epws.serve(
        handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=5, ping_payload=b""
    )
    try:
        raws = [await RawClient.connect(server.port) for _ in range(2)]
        async with asyncio.timeout(5):
            opcode, _, payload = await raws[0].read_frame()
            assert (opcode, payload) == (9, b"")
            raws[0].send(frame(10, b"", mask=True))
            while conns[0].latency is None:
                await asyncio.sleep(0.01)  # polling a figure the pong sets
        assert len(conns) == 2
        settings = conns[0]._ka
        assert settings is not None and settings is conns[1]._ka
        assert settings.payload == b""
        for raw in raws:
            raw.close()
    finally:
        await server.close(timeout=2.0)


async def test_client_ping_payload_is_sent_and_times_the_round_trip() -> None:
    async def handler(conn: epws.Conn) -> None:
        await conn.wait_closed()

    server = await epws.serve(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        pongs: list[bytes] = []
        async with epws.connect(
            f"ws://127.0.0.1:{server.port}/",
            ping_interval=0.05,
            ping_timeout=5,
            ping_payload=b"heartbeat",
        ) as conn:
            conn.pong_handler = pongs.append
            async with asyncio.timeout(5):
                while conn.latency is None:
                    await asyncio.sleep(0.01)  # polling a figure the pong sets
        assert pongs and set(pongs) == {b"heartbeat"}
    finally:
        await server.close(timeout=2.0)


async def test_ping_payload_is_checked_before_any_socket() -> None:
    with pytest.raises(ValueError, match="125"):
        epws.Upgrader(ping_payload=b"x" * 126)
    with pytest.raises(TypeError, match="bytes"):
        epws.Dialer(ping_payload="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        await epws.serve(lambda conn: None, "127.0.0.1", 0, ping_interval=-1)
    with pytest.raises(ValueError, match="125"):
        # No server listens there: the check comes before any connection attempt.
        await epws.connect("ws://127.0.0.1:9/", ping_payload=b"x" * 200)

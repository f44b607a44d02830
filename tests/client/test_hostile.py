"""The client against hostile peers: proxies and servers that answer forever, never,
or a byte at a time. Each attack must end in an error within a bound of time.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import epws
import epws.sync
from epws import Backoff, HandshakeError, ProxyError

from .servers import raw_server, reset


async def endless_head(reader, writer, req) -> None:
    """Answers with a status line, then header lines without end."""
    writer.write(b"HTTP/1.1 200 Connection established\r\n")
    try:
        for _ in range(100_000):
            writer.write(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            await writer.drain()
    except ConnectionError:
        pass


async def silent(reader, writer, req) -> None:
    await asyncio.sleep(30)


async def dribble(reader, writer, req) -> None:
    """A plausible 101, one byte every 50 ms (a slowloris aimed at the client)."""
    try:
        for byte in b"HTTP/1.1 101 Switching Protocols\r\n" + b"X: y\r\n" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass


async def test_proxy_reply_without_end_is_cut_off() -> None:
    # The raw server reads a request head first: CONNECT is one.
    async with raw_server(endless_head) as proxy:
        started = time.monotonic()
        with pytest.raises(ProxyError, match="longer than"):
            async with asyncio.timeout(10):
                await epws.connect("ws://127.0.0.1:9/", proxy=f"http://127.0.0.1:{proxy.port}")
        assert time.monotonic() - started < 5  # not the 10 s outer timeout


async def test_silent_proxy_and_slow_server_hit_the_handshake_timeout() -> None:
    for handler, proxy in [(silent, True), (dribble, False)]:
        async with raw_server(handler) as srv:
            options = {"proxy": f"http://127.0.0.1:{srv.port}"} if proxy else {"proxy": None}
            url = "ws://127.0.0.1:9/" if proxy else f"ws://127.0.0.1:{srv.port}/"
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    await epws.connect(url, handshake_timeout=0.5, **options)
            assert 0.45 <= time.monotonic() - started < 5


async def test_endless_response_head_from_the_server_is_refused() -> None:
    async with raw_server(endless_head) as srv:
        started = time.monotonic()
        with pytest.raises(HandshakeError):
            async with asyncio.timeout(10):
                await epws.connect(f"ws://127.0.0.1:{srv.port}/", proxy=None)
        assert time.monotonic() - started < 5  # not the 10 s outer timeout


async def test_a_server_that_resets_every_connection_is_retried_at_the_backoff_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "epws.client")

    async def rst(reader, writer, req) -> None:
        reset(writer)

    policy = Backoff(initial=0.1, factor=2.0, maximum=10.0, jitter=0.0)
    async with raw_server(rst) as srv:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.6):
                async for _conn in epws.connect(f"ws://127.0.0.1:{srv.port}/", backoff=policy):
                    pytest.fail("every connection is reset")
    # Waits of 0.1, 0.2, 0.4, 0.8 s fit in 1.6 s: at most 5 attempts, not a busy loop
    # (fewer when the machine is slow).
    assert 2 <= len(srv.requests) <= 5


async def test_sync_client_bounds_the_same_attacks() -> None:
    async with raw_server(endless_head) as srv:
        started = time.monotonic()
        with pytest.raises(HandshakeError):
            await asyncio.to_thread(epws.sync.connect, f"ws://127.0.0.1:{srv.port}/", proxy=None)
        assert time.monotonic() - started < 5  # not the 10 s outer timeout
    async with raw_server(endless_head) as proxy:
        with pytest.raises(ProxyError):
            await asyncio.to_thread(
                epws.sync.connect, "ws://127.0.0.1:9/", proxy=f"http://127.0.0.1:{proxy.port}"
            )
    async with raw_server(dribble) as srv:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(
                epws.sync.connect, f"ws://127.0.0.1:{srv.port}/", open_timeout=0.5, proxy=None
            )
        assert 0.45 <= time.monotonic() - started < 5

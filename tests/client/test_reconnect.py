"""Reconnecting with ``async for conn in epws.connect(url)``: what is retried, what is
raised, and how long the client waits, against real servers that refuse, reset,
answer 503 (then 101) and close with 1012.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import pytest
import trustme

import epws
from epws import Backoff, HandshakeError, InvalidURI

from .servers import (
    answer,
    echo,
    epws_server,
    free_port,
    raw_server,
    reset,
    server_frame,
    switching,
)

# Deterministic delays (no jitter) small enough for tests, large enough to measure.
FAST = Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.0)


def retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("retrying in" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- the backoff policy


def test_backoff_grows_caps_and_jitters_within_bounds() -> None:
    policy = Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=0.5)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)]:
        samples = [policy.delay(failures) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in samples)
        assert max(samples) - min(samples) > base * 0.1  # jitter spreads clients out
    assert Backoff(jitter=0).delay(3) == 4.0
    # Retry-After lengthens the wait, never past the maximum.
    assert policy.delay(1, retry_after=7) == 7
    assert policy.delay(1, retry_after=1000) == 10.0


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1}, {"initial": 5, "maximum": 1}, {"factor": 0.5}, {"jitter": 2}]
)
def test_backoff_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# ---------------------------------------------------------------- transient: retried


async def test_refused_then_server_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "epws.client")
    port = free_port()
    started = time.monotonic()

    async def later() -> epws.Server:
        await asyncio.sleep(0.3)
        return await epws.serve(echo, "127.0.0.1", port, close_timeout=2.0)

    starter = asyncio.create_task(later())
    try:
        async with asyncio.timeout(10):
            async for conn in epws.connect(f"ws://127.0.0.1:{port}/", backoff=FAST):
                await conn.send("up")
                assert await conn.recv() == "up"
                await conn.close()
                break
    finally:
        server = await starter
        await server.close(timeout=2.0)
    # Refused for >= 0.3 s with delays 0.05, 0.1, 0.2, 0.2...: a few retries, not a
    # spin: at most 3 plus one per 0.2 s of waiting (the server may start late).
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3
    assert 2 <= retries(caplog) <= 3 + elapsed / 0.2


async def test_reset_and_503_are_retried_then_101_is_yielded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "epws.client")
    seen = 0

    async def handler(reader, writer, req):
        nonlocal seen
        seen += 1
        if seen == 1:
            reset(writer)  # connection reset before any answer
        elif seen == 2:
            writer.write(answer(503, "Service Unavailable", "Retry-After: 0"))
            await writer.drain()
            writer.close()
        elif seen == 3:
            writer.close()  # hangs up without answering: status 0
        else:
            writer.write(switching(req["sec-websocket-key"]) + server_frame(1, b"welcome"))
            await writer.drain()

    async with raw_server(handler) as srv:
        async with asyncio.timeout(10):
            async for conn in epws.connect(f"ws://127.0.0.1:{srv.port}/", backoff=FAST):
                assert await conn.recv() == "welcome"
                conn.abort()
                break
    assert seen == 4
    assert retries(caplog) == 3


async def test_429_is_retried_with_its_retry_after() -> None:
    seen: list[float] = []

    async def handler(reader, writer, req):
        seen.append(time.monotonic())
        if len(seen) == 1:
            writer.write(answer(429, "Too Many Requests", "Retry-After: 1"))
            await writer.drain()
            writer.close()
        else:
            writer.write(switching(req["sec-websocket-key"]))
            await writer.drain()

    policy = Backoff(initial=0.01, maximum=5.0, jitter=0.0)
    async with raw_server(handler) as srv:
        async with asyncio.timeout(10):
            async for conn in epws.connect(f"ws://127.0.0.1:{srv.port}/", backoff=policy):
                conn.abort()
                break
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.95  # Retry-After: 1 beat the 10 ms backoff


async def test_1012_close_waits_before_reconnecting() -> None:
    opened: list[float] = []

    async def handler(conn: epws.Conn) -> None:
        opened.append(time.monotonic())
        if len(opened) <= 2:
            await conn.close(1012, "restarting")
            return
        await echo(conn)

    policy = Backoff(initial=0.2, factor=2.0, maximum=1.0, jitter=0.0)
    async with epws_server(handler) as server:
        rounds = 0
        async with asyncio.timeout(10):
            async for conn in epws.connect(f"ws://127.0.0.1:{server.port}/", backoff=policy):
                rounds += 1
                try:
                    await conn.send("ping")
                    assert await conn.recv() == "ping"
                except epws.ConnectionClosed as exc:
                    assert exc.code == 1012
                    continue
                await conn.close()
                break
    assert rounds == 3
    # Two 1012 closes in a row: the waits grow 0.2 s, then 0.4 s.
    assert opened[1] - opened[0] >= 0.2
    assert opened[2] - opened[1] >= 0.4


async def test_normal_close_reconnects_at_once_and_previous_conn_is_closed() -> None:
    opened: list[float] = []

    async def handler(conn: epws.Conn) -> None:
        opened.append(time.monotonic())
        await echo(conn)

    slow = Backoff(initial=5.0, maximum=5.0, jitter=0.0)
    conns: list[epws.Conn] = []
    async with epws_server(handler) as server:
        async with asyncio.timeout(10):
            async for conn in epws.connect(f"ws://127.0.0.1:{server.port}/", backoff=slow):
                conns.append(conn)
                await conn.send("x")
                assert await conn.recv() == "x"
                if len(conns) == 3:
                    await conn.close()
                    break
                # Left open: the next round closes it (one connection at a time).
    assert [c.closed for c in conns] == [True, True, True]
    assert [c.close_code for c in conns[:2]] == [1000, 1000]
    assert opened[2] - opened[0] < 4.5  # no 5 s backoff after a healthy connection


async def test_max_attempts_bounds_the_retries() -> None:
    port = free_port()
    policy = Backoff(initial=0.01, maximum=0.02, jitter=0.0, max_attempts=3)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(10):
            async for _conn in epws.connect(f"ws://127.0.0.1:{port}/", backoff=policy):
                pytest.fail("nothing listens there")
    assert time.monotonic() - started < 5  # three attempts of 10-20 ms apart


# ---------------------------------------------------------------- final: raised at once


@pytest.mark.parametrize("status", [400, 401, 403, 404, 426])
async def test_4xx_is_raised_without_retrying(status: int) -> None:
    async def handler(reader, writer, req):
        writer.write(answer(status, "No"))
        await writer.drain()
        writer.close()

    async with raw_server(handler) as srv:
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(10):
                async for _conn in epws.connect(f"ws://127.0.0.1:{srv.port}/", backoff=FAST):
                    pytest.fail("the server refuses")
    assert info.value.status == status
    assert len(srv.requests) == 1


async def test_bad_url_is_raised() -> None:
    with pytest.raises(InvalidURI):
        async with asyncio.timeout(5):
            async for _conn in epws.connect("http://127.0.0.1:1/", backoff=FAST):
                pytest.fail("not a WebSocket URL")


async def test_tls_verification_failure_is_raised_without_retrying() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with epws_server(echo, ssl=server_ctx) as server:
        # The system's CAs do not know trustme's: verification fails.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with asyncio.timeout(10):
                async for _conn in epws.connect(f"wss://127.0.0.1:{server.port}/", backoff=FAST):
                    pytest.fail("the certificate is not trusted")
        assert not server.connections


async def test_a_wrong_101_is_not_retried() -> None:
    async def handler(reader, writer, req):
        writer.write(switching("not-the-key"))
        await writer.drain()

    async with raw_server(handler) as srv:
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(10):
                async for _conn in epws.connect(f"ws://127.0.0.1:{srv.port}/", backoff=FAST):
                    pytest.fail("the accept key is wrong")
    assert info.value.status == 101
    assert len(srv.requests) == 1


# ---------------------------------------------------------------- the other two forms


async def test_await_and_async_with_still_open_one_connection() -> None:
    async with epws_server(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        conn = await epws.connect(url)
        await conn.send("a")
        assert await conn.recv() == "a"
        await conn.close()
        async with epws.connect(url) as conn2:
            await conn2.send("b")
            assert await conn2.recv() == "b"
        assert conn2.closed

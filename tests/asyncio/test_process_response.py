"""serve(process_response=...): the 101 shown to the application before it is written.

Over real sockets on loopback: epws's own client where the answer's headers matter,
raw sockets where the exact bytes do. Each test fails without the hook (serve()
refused the keyword before it existed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import epws
from epws import HandshakeError, HTTPResponse, Request
from epws.protocol.http11 import Headers, Response

from .wsraw import read_http_head, request_bytes


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


@asynccontextmanager
async def server_with(**options: Any) -> AsyncIterator[epws.Server]:
    options.setdefault("close_timeout", 2.0)
    handler = options.pop("handler", echo)
    server = await epws.serve(handler, "127.0.0.1", 0, **options)
    try:
        yield server
    finally:
        await server.close(timeout=2.0)


async def test_a_sync_hook_adds_headers_that_depend_on_the_request() -> None:
    seen: list[tuple[str, int, str | None]] = []

    def process(request: Request, response: Response) -> None:
        seen.append((request.path, response.status, response.headers.get("Upgrade")))
        response.headers.add("X-Request-Id", request.headers.get("X-Request-Id") or "none")
        response.headers.add("Set-Cookie", "session=abc; HttpOnly")

    async with server_with(process_response=process, subprotocols=["chat"]) as server:
        url = f"ws://127.0.0.1:{server.port}/room"
        async with epws.connect(
            url, headers=[("X-Request-Id", "r-17")], subprotocols=["chat"]
        ) as conn:
            assert conn.response is not None
            assert conn.response.headers.get("X-Request-Id") == "r-17"
            assert conn.response.headers.get("Set-Cookie") == "session=abc; HttpOnly"
            assert conn.subprotocol == "chat"  # the negotiation is untouched
            await conn.send("hello")
            assert await asyncio.wait_for(conn.recv(), 5) == "hello"
    assert seen == [("/room", 101, "websocket")]


async def test_a_hook_changes_and_removes_the_upgraders_extra_headers() -> None:
    def process(request: Request, response: Response) -> None:
        response.headers.set("X-Static", "per-request")
        response.headers.remove("X-Gone")

    async with (
        server_with(
            process_response=process, extra_headers=[("X-Static", "a"), ("X-Gone", "b")]
        ) as server,
        epws.connect(f"ws://127.0.0.1:{server.port}/") as conn,
    ):
        assert conn.response is not None
        headers = conn.response.headers
        assert headers.get_all("X-Static") == ["per-request"]
        assert "X-Gone" not in headers


async def test_a_hook_refuses_with_an_http_response_and_no_handler_runs() -> None:
    started: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        started.append(conn)

    def process(request: Request, response: Response) -> HTTPResponse | None:
        if request.query.get("token") != ["good"]:
            return HTTPResponse(403, "no token\n", headers=[("X-Why", "token")])
        return None

    async with server_with(handler=handler, process_response=process) as server:
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/?token=bad")
        assert info.value.status == 403
        assert ("X-Why", "token") in list(info.value.headers)
        assert not started and not server.connections
        async with epws.connect(f"ws://127.0.0.1:{server.port}/?token=good"):
            pass
    assert len(started) == 1


async def test_an_async_hook_runs_before_the_101_and_may_refuse() -> None:
    order: list[str] = []

    async def handler(conn: epws.Conn) -> None:
        order.append("handler")
        await echo(conn)

    async def process(request: Request, response: Response) -> HTTPResponse | None:
        await asyncio.sleep(0.05)  # a lookup elsewhere (a session store, say)
        order.append("hook")
        if request.path == "/busy":
            return HTTPResponse(429, "later\n", headers=[("Retry-After", "3")])
        response.headers.add("X-Looked-Up", "yes")
        return None

    async with server_with(handler=handler, process_response=process) as server:
        async with epws.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            assert conn.response is not None
            assert conn.response.headers.get("X-Looked-Up") == "yes"
            await conn.send("x")
            assert await asyncio.wait_for(conn.recv(), 5) == "x"
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/busy")
        assert info.value.status == 429
        assert ("Retry-After", "3") in list(info.value.headers)
    assert order == ["hook", "handler", "hook"]


async def test_it_runs_after_process_request() -> None:
    calls: list[str] = []

    def before(request: Request) -> None:
        calls.append("request")

    def after(request: Request, response: Response) -> None:
        calls.append("response")

    async with server_with(process_request=before, process_response=after) as server:
        conn = await epws.connect(f"ws://127.0.0.1:{server.port}/")
        await conn.close()
    assert calls == ["request", "response"]


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_a_failing_hook_gets_500(style: str, caplog: pytest.LogCaptureFixture) -> None:
    def sync_hook(request: Request, response: Response) -> None:
        raise RuntimeError("bug in the hook")

    async def async_hook(request: Request, response: Response) -> None:
        raise RuntimeError("bug in the hook")

    hook = sync_hook if style == "sync" else async_hook
    async with server_with(process_response=hook) as server:
        with pytest.raises(HandshakeError) as info:
            await epws.connect(f"ws://127.0.0.1:{server.port}/")
        assert info.value.status == 500
        assert not server.connections
    assert any("process_response failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r.headers.set("Sec-WebSocket-Accept", "forged"),
        lambda r: r.headers.add("Sec-WebSocket-Protocol", "other"),
        lambda r: r.headers.remove("Upgrade"),
        lambda r: r.headers.add("Sec-WebSocket-Extensions", "permessage-deflate"),
        lambda r: setattr(r, "status", 200),
        lambda r: r.headers.add("X-Bad", "line\r\nInjected: yes"),
    ],
)
async def test_a_hook_that_breaks_the_101_gets_500(tamper: Any) -> None:
    """The connection is set up from what was negotiated: a 101 contradicting it (or
    a header that cannot be sent) is never written."""

    def process(request: Request, response: Response) -> None:
        tamper(response)

    async with server_with(process_response=process, compression=None) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request_bytes(server.port)[0])
            async with asyncio.timeout(5):
                status, headers, _ = await read_http_head(reader)
                rest = await reader.read()
        finally:
            writer.transport.abort()
        assert status == 500
        assert "injected" not in headers and b"Injected" not in rest
        assert not server.connections


async def test_server_close_answers_a_hook_still_running_with_503() -> None:
    entered = asyncio.Event()
    started: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        started.append(conn)

    async def slow(request: Request, response: Response) -> None:
        entered.set()
        await asyncio.sleep(30)

    server = await epws.serve(handler, "127.0.0.1", 0, process_response=slow)
    try:
        dialing = asyncio.ensure_future(epws.connect(f"ws://127.0.0.1:{server.port}/"))
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(server.close(timeout=2.0), 5)
        with pytest.raises(HandshakeError) as info:
            await asyncio.wait_for(dialing, 5)
        assert info.value.status == 503
        assert not started
    finally:
        await server.close(timeout=2.0)


async def test_handshake_timeout_bounds_an_async_hook(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="epws.server")

    async def stuck(request: Request, response: Response) -> None:
        await asyncio.sleep(30)

    async with server_with(process_response=stuck, handshake_timeout=0.3) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(HandshakeError):  # the server hung up: no usable answer
            await epws.connect(f"ws://127.0.0.1:{server.port}/", handshake_timeout=5)
        assert loop.time() - started < 3


async def test_unix_serve_takes_the_hook_too() -> None:
    def process(request: Request, response: Response) -> None:
        response.headers.add("X-Over", "unix")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws.sock")
        server = await epws.unix_serve(echo, path, process_response=process)
        try:
            async with epws.unix_connect(path) as conn:
                assert conn.response is not None
                assert conn.response.headers.get("X-Over") == "unix"
        finally:
            await server.close(timeout=2.0)


def test_headers_set_and_remove() -> None:
    headers = Headers([("A", "1"), ("b", "2"), ("a", "3"), ("C", "4")])
    headers.set("a", "x")
    assert list(headers) == [("a", "x"), ("b", "2"), ("C", "4")]
    assert headers.get("A") == "x"
    headers.set("D", "5")
    headers.remove("B")
    headers.remove("absent")
    assert list(headers) == [("a", "x"), ("C", "4"), ("D", "5")]
    assert "b" not in headers and headers.get_all("d") == ["5"]

"""Redirects (3xx with Location: followed, bounded, never from wss to ws) and
``unix_connect`` (a WebSocket over a Unix socket), against real servers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
import trustme

import epws
from epws import HandshakeError, HTTPResponse, InvalidURI, Request

from .servers import answer, echo, epws_server, raw_server


def redirecting(status: int, location: str):
    async def handler(reader, writer, req):
        writer.write(answer(status, "Moved", f"Location: {location}"))
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_server_is_followed(status: int) -> None:
    paths: list[str] = []

    def record(request: Request) -> None:
        paths.append(request.target)

    async with epws_server(echo, process_request=record) as target:
        location = f"ws://127.0.0.1:{target.port}/new?x=1"
        async with raw_server(redirecting(status, location)) as srv:
            async with asyncio.timeout(10):
                async with epws.connect(f"ws://127.0.0.1:{srv.port}/old") as conn:
                    await conn.send("moved")
                    assert await conn.recv() == "moved"
    assert paths == ["/new?x=1"]
    assert len(srv.requests) == 1


async def test_relative_and_http_locations_resolve_against_the_request() -> None:
    def route(request: Request) -> HTTPResponse | None:
        if request.path == "/a":
            return HTTPResponse(302, headers=[("Location", "b/c")])  # relative path
        if request.path == "/b/c":
            return HTTPResponse(307, headers=[("Location", "/d#frag")])  # absolute path
        if request.path == "/d":
            port = (request.headers.get("Host") or "").rpartition(":")[2]
            return HTTPResponse(308, headers=[("Location", f"http://127.0.0.1:{port}/e")])
        return None  # /e: upgrade

    async with epws_server(echo, process_request=route) as server:
        async with asyncio.timeout(10):
            async with epws.connect(f"ws://127.0.0.1:{server.port}/a") as conn:
                await conn.send("e")
                assert await conn.recv() == "e"


async def test_redirect_loop_is_bounded() -> None:
    async with raw_server(redirecting(302, "/again")) as srv:
        with pytest.raises(HandshakeError, match="redirects"):
            async with asyncio.timeout(10):
                await epws.connect(f"ws://127.0.0.1:{srv.port}/", max_redirects=4)
    assert len(srv.requests) == 5  # the first request and 4 redirects, then no more


async def test_max_redirects_zero_reports_the_3xx() -> None:
    async with raw_server(redirecting(301, "/x")) as srv:
        with pytest.raises(HandshakeError):
            async with asyncio.timeout(10):
                await epws.connect(f"ws://127.0.0.1:{srv.port}/", max_redirects=0)
    assert len(srv.requests) == 1


async def test_no_redirect_from_wss_to_ws() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with epws_server(echo) as plain:
        for location in (f"ws://127.0.0.1:{plain.port}/", f"http://127.0.0.1:{plain.port}/"):
            async with raw_server(redirecting(302, location), ssl=server_ctx) as srv:
                with pytest.raises(HandshakeError, match="wss:// to ws://"):
                    async with asyncio.timeout(10):
                        await epws.connect(f"wss://127.0.0.1:{srv.port}/", ssl=client_ctx)
        assert not plain.connections


async def test_redirect_to_a_non_websocket_scheme_is_refused() -> None:
    async with raw_server(redirecting(302, "ftp://127.0.0.1/")) as srv:
        with pytest.raises(InvalidURI):
            async with asyncio.timeout(10):
                await epws.connect(f"ws://127.0.0.1:{srv.port}/")


async def test_3xx_without_location_is_a_handshake_error() -> None:
    async def handler(reader, writer, req):
        writer.write(answer(302, "Found"))
        await writer.drain()
        writer.close()

    async with raw_server(handler) as srv:
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(10):
                await epws.connect(f"ws://127.0.0.1:{srv.port}/")
    assert info.value.status == 302


# ---------------------------------------------------------------- Unix sockets


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


async def test_unix_connect(tmp_path: Path) -> None:
    path = tmp_path / "ws.sock"
    hosts: list[str | None] = []

    def record(request: Request) -> None:
        hosts.append(request.headers.get("Host"))

    server = await epws.serve(echo, sock=unix_listener(path), process_request=record)
    try:
        async with asyncio.timeout(10):
            async with epws.unix_connect(str(path)) as conn:
                await conn.send("over unix")
                assert await conn.recv() == "over unix"
            conn = await epws.unix_connect(str(path), "ws://app.internal/chat")
            await conn.close()
    finally:
        await server.close(timeout=2.0)
    assert hosts == ["localhost", "app.internal"]


async def test_unix_connect_wss(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.internal").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    path = tmp_path / "wss.sock"
    server = await epws.serve(echo, sock=unix_listener(path), ssl=server_ctx)
    try:
        async with asyncio.timeout(10):
            async with epws.unix_connect(str(path), "wss://app.internal/", ssl=client_ctx) as conn:
                await conn.send("tls over unix")
                assert await conn.recv() == "tls over unix"
    finally:
        await server.close(timeout=2.0)


async def test_unix_connect_reconnects_and_ignores_proxies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")  # would fail if used
    path = tmp_path / "later.sock"
    backoff = epws.Backoff(initial=0.05, maximum=0.1, jitter=0.0)

    async def later() -> epws.Server:
        await asyncio.sleep(0.2)
        return await epws.serve(echo, sock=unix_listener(path))

    starter = asyncio.create_task(later())
    try:
        async with asyncio.timeout(10):
            async for conn in epws.unix_connect(str(path), backoff=backoff):
                await conn.send("x")
                assert await conn.recv() == "x"
                await conn.close()
                break
    finally:
        server = await starter
        await server.close(timeout=2.0)


async def test_unix_connect_does_not_follow_redirects(tmp_path: Path) -> None:
    path = tmp_path / "redirect.sock"

    def route(request: Request) -> HTTPResponse:
        return HTTPResponse(302, headers=[("Location", "ws://elsewhere/")])

    server = await epws.serve(echo, sock=unix_listener(path), process_request=route)
    try:
        with pytest.raises(HandshakeError, match="Unix socket"):
            async with asyncio.timeout(10):
                await epws.unix_connect(str(path))
    finally:
        await server.close(timeout=2.0)


CREDENTIALS = [("Authorization", "Bearer s3cret"), ("Cookie", "session=1"), ("X-Trace", "t1")]


async def test_redirect_to_another_origin_drops_credentials() -> None:
    seen: list[tuple[str, str | None, str | None, str | None]] = []

    def route(request: Request) -> HTTPResponse | None:
        h = request.headers
        seen.append((request.path, h.get("Authorization"), h.get("Cookie"), h.get("X-Trace")))
        if request.path == "/hop":
            return HTTPResponse(302, headers=[("Location", "/final")])
        return None

    async with epws_server(echo, process_request=route) as target:
        # Same origin: the credentials stay.
        async with asyncio.timeout(10):
            conn = await epws.connect(f"ws://127.0.0.1:{target.port}/hop", headers=CREDENTIALS)
            await conn.close()
        assert seen == [
            ("/hop", "Bearer s3cret", "session=1", "t1"),
            ("/final", "Bearer s3cret", "session=1", "t1"),
        ]
        seen.clear()
        # Another port is another origin: they go, and stay gone for later hops.
        location = f"ws://127.0.0.1:{target.port}/hop"
        async with raw_server(redirecting(307, location)) as srv:
            async with asyncio.timeout(10):
                conn = await epws.connect(f"ws://127.0.0.1:{srv.port}/", headers=CREDENTIALS)
                await conn.close()
        assert srv.requests[0]["authorization"] == "Bearer s3cret"
        assert seen == [("/hop", None, None, "t1"), ("/final", None, None, "t1")]


async def test_unix_serve_and_a_stale_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.sock"
    # A socket file left by a crashed run: nothing listens on it any more.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    server = await epws.unix_serve(echo, path)
    try:
        async with asyncio.timeout(10), epws.unix_connect(str(path)) as conn:
            await conn.send("served on unix")
            assert await conn.recv() == "served on unix"
    finally:
        await server.close(timeout=2.0)


async def test_unix_serve_never_replaces_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(OSError):
        await epws.unix_serve(echo, path)
    assert path.read_text() == "precious"

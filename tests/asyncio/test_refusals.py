"""``Upgrader.on_refusal``: every handshake the server refuses by itself is reported,
with the status it sends, so an application can count refusals it never answered.

Raw requests on real sockets: each kind of refusal the library makes (bounds, not an
upgrade, wrong version, bad key, cross origin), and the ones it does not make
(``process_request``'s answers, successful upgrades), which must not be reported.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import epws
from epws import HandshakeError

from .test_server import echo, http_exchange, server_with
from .wsraw import request_bytes


async def test_every_refusal_of_the_library_is_reported_with_its_status() -> None:
    seen: list[tuple[int, str | None]] = []

    def on_refusal(error: HandshakeError, request: epws.Request | None) -> None:
        seen.append((error.status, request.path if request is not None else None))

    def process_request(request: epws.Request) -> epws.HTTPResponse | None:
        return epws.HTTPResponse(404, "no\n") if request.path == "/missing" else None

    async with server_with(echo, on_refusal=on_refusal, process_request=process_request) as srv:
        port = srv.port
        cases = [
            (request_bytes(port, extra=[("X-Big", "a" * 70000)])[0], 431, None),
            (request_bytes(port, path="/" + "a" * 9000)[0], 414, None),
            (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426, "/ws"),
            (request_bytes(port, path="/ws", version="12")[0], 426, "/ws"),
            (request_bytes(port, path="/ws", key="dG9vIHNob3J0")[0], 400, "/ws"),
            (
                request_bytes(port, path="/ws", extra=[("Origin", "https://evil.example")])[0],
                403,
                "/ws",
            ),
        ]
        for data, status, path in cases:
            seen.clear()
            got, _, _ = await http_exchange(port, data)
            assert got == status
            assert seen == [(status, path)], (status, seen)
        # What the application answers, and an upgrade, are not refusals of the library.
        seen.clear()
        got, _, _ = await http_exchange(port, request_bytes(port, path="/missing")[0])
        assert got == 404
        async with epws.connect(f"ws://127.0.0.1:{port}/ws") as conn:
            await conn.send("hi")
            async with asyncio.timeout(5):
                assert await conn.recv() == "hi"
        assert seen == []


async def test_a_failing_on_refusal_is_logged_and_the_refusal_still_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def on_refusal(error: HandshakeError, request: epws.Request | None) -> None:
        raise RuntimeError("a bug in the metrics")

    async with server_with(echo, on_refusal=on_refusal) as srv:
        with caplog.at_level(logging.ERROR, logger="epws.server"):
            status, headers, _ = await http_exchange(
                srv.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert any("on_refusal failed" in r.getMessage() for r in caplog.records)

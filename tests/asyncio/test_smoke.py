from __future__ import annotations

import asyncio

import pytest

import epws


async def test_echo_roundtrip(request: pytest.FixtureRequest) -> None:
    async def echo(conn: epws.Conn) -> None:
        async for message in conn:
            await conn.send(message)

    server = await epws.serve(echo, "127.0.0.1", 0)
    async with server, epws.connect(f"ws://127.0.0.1:{server.port}/") as conn:
        await conn.send("hello")
        assert await conn.recv() == "hello"
        await conn.send(b"\x00\x01")
        assert await conn.recv() == b"\x00\x01"
    loop_module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    assert loop_module == ("uvloop" if "uvloop" in request.node.name else "asyncio")

"""The client examples in examples/ (shown in the docs) run and do what they say."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from . import proxies
from .servers import echo, epws_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_reconnect_example() -> None:
    out = await run(str(EXAMPLES / "reconnect.py"))
    assert out.splitlines() == [
        "closed with 1012 (restarting); reconnecting",
        "closed with 1012 (restarting); reconnecting",
        "echo: hello",
    ]


async def test_unix_socket_example() -> None:
    assert await run(str(EXAMPLES / "unix_socket.py")) == "over a Unix socket\n"


async def test_server_hooks_example() -> None:
    assert (await run(str(EXAMPLES / "server_hooks.py"))).splitlines() == [
        "/health: HTTP/1.1 200 OK",
        "no token: refused with 403",
        "with a token: X-Session session-for-s3",
        "echo: hello",
    ]


async def test_sync_client_example() -> None:
    async with epws_server(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        assert await run(str(EXAMPLES / "sync_client.py"), url, "a", "b") == "a\nb\n"


async def test_proxy_client_example(tmp_path: Path) -> None:
    async with epws_server(echo) as server:
        with proxies.tinyproxy(tmp_path) as pport:
            out = await run(
                str(EXAMPLES / "proxy_client.py"),
                f"ws://127.0.0.1:{server.port}/",
                f"http://127.0.0.1:{pport}",
            )
    assert out == "hello through the proxy\n"

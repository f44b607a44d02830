"""WebSocket over a Unix socket: a server on a socket file, ``epws.unix_connect``.

Self-contained: serves an echo on a temporary socket file and talks to it. The URI
passed to unix_connect gives the Host header and the path; it is never resolved.

Run: .venv/bin/python examples/unix_socket.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import epws


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        server = await epws.serve(echo, sock=listener)
        async with epws.unix_connect(path, "ws://app.internal/chat") as conn:
            await conn.send("over a Unix socket")
            print(await conn.recv())
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())

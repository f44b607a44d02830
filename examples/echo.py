"""An echo server: every message comes back as it was sent.

Run: .venv/bin/python examples/echo.py [--host H] [--port N] (after bash scripts/run or
bash scripts/test made .venv); then connect any WebSocket client to
ws://localhost:8080/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import epws


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


async def main(host: str, port: int) -> None:
    server = await epws.serve(echo, host, port, check_origin=["*"])
    print(f"echo server on ws://{host}:{server.port}/", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))

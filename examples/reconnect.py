"""Reconnecting: ``async for conn in epws.connect(url)`` comes back after a restart.

Self-contained: it starts a server that closes the first two connections with 1012
(service restart) and answers the third; the client reconnects after a backoff each
time and prints what happened.

Run: .venv/bin/python examples/reconnect.py
"""

from __future__ import annotations

import asyncio

import epws

served = 0


async def flaky(conn: epws.Conn) -> None:
    global served
    served += 1
    if served <= 2:
        await conn.close(1012, "restarting")  # come back later, please
        return
    async for message in conn:
        await conn.send(f"echo: {message!s}" if isinstance(message, str) else message)


async def main() -> None:
    server = await epws.serve(flaky, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/"
    # Small delays for the demo; the defaults are 1 s doubling up to 60 s.
    backoff = epws.Backoff(initial=0.1, maximum=2.0)
    async for conn in epws.connect(url, backoff=backoff):
        try:
            await conn.send("hello")
            print(await conn.recv())
        except epws.ConnectionClosed as closed:
            print(f"closed with {closed.code} ({closed.reason}); reconnecting")
            continue
        await conn.close()
        break
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())

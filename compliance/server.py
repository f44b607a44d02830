"""Echo server for Autobahn|Testsuite's fuzzingclient: every message back as received.

    python compliance/server.py --port 9001

Messages up to 16 MiB are accepted (the suite's 9.* cases); any origin is allowed,
as the suite sends none that matches. Uses the public epws API only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import epws

MAX_SIZE = 16 * 1024 * 1024


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


async def main(host: str, port: int) -> None:
    server = await epws.serve(
        echo,
        host,
        port,
        read_limit=MAX_SIZE,
        check_origin=["*"],
        compression=epws.PerMessageDeflate(),
    )
    print(f"compliance server on ws://{host}:{server.port}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))

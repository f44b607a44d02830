"""The epws server the hostile-peer tests attack, run as its own process.

Run as ``python -m tests.hostile.serve --loop asyncio|uvloop [--nofile N]``: it
prints ``PORT <n>`` on stdout once listening and logs to stderr (which the tests
count). Its own process, so that the tests can read its memory (VmRSS in
/proc/<pid>/status) and CPU time, and lower its file-descriptor limit, without the
attacking side in the figures.

Paths:
    /        echo, reading with ``async for`` (recv mode)
    /cb      echo in callback mode (``on_message`` + ``send_nowait``)
    /noread  a handler that never reads: only the queue bounds what it holds
    /close   closes at once with 1000 (then waits for the peer's close)
    /stats   plain HTTP: JSON with the connections and what they buffer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import resource
import signal
import sys
from typing import Any

import epws

_server: epws.Server | None = None


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


def callback_echo(conn: epws.Conn) -> None:
    def on_message(message: str | bytes) -> None:
        conn.send_nowait(message)

    conn.on_message = on_message


async def handler(conn: epws.Conn) -> None:
    path = conn.request.path if conn.request is not None else "/"
    if path == "/noread":
        await conn.wait_closed()
    elif path == "/close":
        await conn.close(1000, "bye")
    elif path == "/cb":
        callback_echo(conn)  # no task: returns at once, the conn stays open
        await conn.wait_closed()
    else:
        await echo(conn)


def stats() -> dict[str, int]:
    assert _server is not None
    conns = list(_server.connections)
    return {
        "connections": len(conns),
        "buffered": sum(c.buffered_amount for c in conns),
        "queued": sum(len(c._inbound) for c in conns),
    }


def process_request(request: epws.Request) -> epws.HTTPResponse | None:
    if request.path == "/stats":
        return epws.HTTPResponse(200, json.dumps(stats()), content_type="application/json")
    return None


async def main(args: argparse.Namespace) -> None:
    global _server
    _server = await epws.serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        handshake_timeout=args.handshake_timeout,
        close_timeout=args.close_timeout,
    )
    print(f"PORT {_server.port}", flush=True)
    await _server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--nofile", type=int, default=0)
    parser.add_argument("--handshake-timeout", type=float, default=1.0)
    parser.add_argument("--close-timeout", type=float, default=1.0)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: where is it stuck?
    if args.nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
    factory: Any = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args))

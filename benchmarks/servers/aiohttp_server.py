"""aiohttp, as its docs show a WebSocket handler and an application runner.

echo: every message back. chat: every message to every connected client, looping
over ``ws.send_str``; aiohttp buffers without bound and evicts no one.
"""

from __future__ import annotations

import asyncio

from _args import parse, run
from aiohttp import WSMsgType, web

CLIENTS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("clients", set)


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def chat(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    clients = request.app[CLIENTS]
    clients.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                for client in list(clients):
                    await client.send_str(msg.data)
    finally:
        clients.discard(ws)
    return ws


def main() -> None:
    args = parse(__doc__)
    app = web.Application()
    app[CLIENTS] = set()
    app.router.add_get("/ws", chat if args.kind == "chat" else echo)

    async def serve_forever() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        await asyncio.Event().wait()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()

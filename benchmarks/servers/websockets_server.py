"""websockets (the asyncio implementation), as its docs show an echo and a broadcast.

echo: every message back. chat: every message to every connected client with
``websockets.broadcast``, which writes without waiting and buffers without bound.
"""

from __future__ import annotations

from _args import parse, run
from websockets.asyncio.server import ServerConnection, broadcast, serve

CONNECTIONS: set[ServerConnection] = set()


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def chat(websocket: ServerConnection) -> None:
    CONNECTIONS.add(websocket)
    try:
        async for message in websocket:
            broadcast(CONNECTIONS, message)
    finally:
        CONNECTIONS.discard(websocket)


def main() -> None:
    args = parse(__doc__)
    handler = chat if args.kind == "chat" else echo

    async def serve_forever() -> None:
        async with serve(handler, args.host, args.port) as server:
            await server.serve_forever()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()

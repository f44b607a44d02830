"""epws, written as its README shows: ``epws.serve`` with a handler per connection.

echo: every message back. chat: a minimal stand-in with the seed's protocol (every
message to every client, a bounded queue of 256 per client, a client whose queue is
full is evicted, the write pump coalesces what is queued into one ``\\n``-joined
message). benchmarks/run uses the real ``epws-chat`` instead when it is installed.
"""

from __future__ import annotations

import asyncio
from collections import deque

from _args import parse, run

import epws

QUEUE_LIMIT = 256  # messages a client may fall behind before it is evicted (the seed's)


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


class Client:
    """One connection's send queue and the event that wakes its write pump."""

    __slots__ = ("conn", "queue", "ready")

    def __init__(self, conn: epws.Conn) -> None:
        self.conn = conn
        self.queue: deque[str] = deque()
        self.ready = asyncio.Event()


CLIENTS: set[Client] = set()


def broadcast(message: str) -> None:
    for client in list(CLIENTS):
        if len(client.queue) >= QUEUE_LIMIT:
            CLIENTS.discard(client)  # stuck or too slow: evicted at once, no waiting
            client.conn.abort()
        else:
            client.queue.append(message)
            client.ready.set()


async def write_pump(client: Client) -> None:
    while True:
        await client.ready.wait()
        client.ready.clear()
        if client.queue:
            batch = "\n".join(client.queue)
            client.queue.clear()
            await client.conn.send(batch)


async def chat(conn: epws.Conn) -> None:
    conn.read_limit = 512
    client = Client(conn)
    CLIENTS.add(client)
    writer = asyncio.create_task(write_pump(client))
    try:
        async for message in conn:
            if isinstance(message, str):
                broadcast(message.replace("\n", " ").strip())
    finally:
        CLIENTS.discard(client)
        writer.cancel()


def main() -> None:
    args = parse(__doc__)
    handler = chat if args.kind == "chat" else echo

    async def serve_forever() -> None:
        server = await epws.serve(handler, args.host, args.port)
        await server.serve_forever()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()

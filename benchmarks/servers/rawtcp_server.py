"""A raw TCP echo server: the ceiling the WebSocket echo rows are compared with.

No WebSocket at all: an asyncio ``Protocol`` whose ``data_received`` writes every chunk
back as it came. The generator (``-mode tcpecho``) sends fixed-size messages with the
same window as the WebSocket echo scenarios and reads exactly that many bytes back per
message, so the difference between this row and a WebSocket row of the same loop is
what framing, masking, parsing and the library's Python cost (and the generator's
WebSocket work) add to moving the same bytes through the same event loop.

It is the smallest echo an asyncio program can be; nothing here is a library's idiom.
"""

from __future__ import annotations

import asyncio
from typing import cast

from _args import parse, run


class Echo(asyncio.Protocol):
    """Every chunk straight back: one ``transport.write`` per ``data_received``."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def main() -> None:
    args = parse(__doc__)
    if args.kind != "echo":
        raise SystemExit("rawtcp_server.py serves echo only")

    async def serve_forever() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, args.host, args.port)
        await server.serve_forever()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()

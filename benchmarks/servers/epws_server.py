"""epws echo server, in the two styles its docs show.

callback (the default, what docs/performance.md recommends for throughput): a plain
function handler sets ``conn.on_message = conn.send_nowait``; messages are echoed from
the protocol callback, with no task per connection, and the replies of one loop
iteration leave in one write. async: ``async for message in conn: await
conn.send(message)`` in a task per connection (the README's quick start).

The chat scenarios use the real ``epws-chat`` (benchmarks/run installs the project).
"""

from __future__ import annotations

from _args import parse, run

import epws


async def echo_async(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


def echo_callback(conn: epws.Conn) -> None:
    conn.on_message = conn.send_nowait


def main() -> None:
    args = parse(
        __doc__,
        lambda p: p.add_argument("--handler", choices=("callback", "async"), default="callback"),
    )
    if args.kind != "echo":
        raise SystemExit("epws_server.py serves echo only; the chat is epws-chat")
    handler = echo_callback if args.handler == "callback" else echo_async

    async def serve_forever() -> None:
        server = await epws.serve(handler, args.host, args.port)
        await server.serve_forever()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()

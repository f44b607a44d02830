"""Server hooks: ``process_request`` answers plain HTTP, ``process_response`` sees the 101.

Self-contained: a server on a free port with both hooks, then three clients.
``process_request`` answers ``/health`` itself (no upgrade); ``process_response`` runs
once the upgrade is negotiated, refuses a request without a token (403, the handler
never runs) and adds a per-request header to the 101 of the others.

Run: .venv/bin/python examples/server_hooks.py
"""

from __future__ import annotations

import asyncio

import epws
from epws.protocol.http11 import Response


async def echo(conn: epws.Conn) -> None:
    async for message in conn:
        await conn.send(message)


def process_request(request: epws.Request) -> epws.HTTPResponse | None:
    if request.path == "/health":
        return epws.HTTPResponse(200, "ok\n")
    return None  # go on with the upgrade


async def process_response(request: epws.Request, response: Response) -> epws.HTTPResponse | None:
    token = request.query.get("token", [""])[0]
    if token != "s3cret":  # an async hook may look the token up elsewhere
        return epws.HTTPResponse(403, "a token is needed\n")
    response.headers.add("X-Session", f"session-for-{token[:2]}")
    return None  # send the 101, with the header added


async def main() -> None:
    server = await epws.serve(
        echo,
        "127.0.0.1",
        0,
        process_request=process_request,
        process_response=process_response,
    )
    base = f"ws://127.0.0.1:{server.port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status_line = (await reader.readline()).decode().strip()
    writer.close()
    print(f"/health: {status_line}")
    try:
        await epws.connect(f"{base}/chat")
    except epws.HandshakeError as exc:
        print(f"no token: refused with {exc.status}")
    async with epws.connect(f"{base}/chat?token=s3cret") as conn:
        assert conn.response is not None
        print(f"with a token: X-Session {conn.response.headers.get('X-Session')}")
        await conn.send("hello")
        reply = await conn.recv()
        assert isinstance(reply, str)
        print(f"echo: {reply}")
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())

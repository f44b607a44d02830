"""The apps of the ASGI benchmark (benchmarks/asgi_bench.py), served by uvicorn.

``echo``: a Starlette endpoint that sends every message back, as an app developer
writes it. ``chat``: a broadcast endpoint written the way FastAPI's documentation
shows it (a set of connections, and ``await send_text`` to each in turn). Both serve
``/ws``, the path the load generator dials; the same code runs under every ``--ws``
implementation.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def _echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


_clients: set[WebSocket] = set()


async def _chat(ws: WebSocket) -> None:
    await ws.accept()
    _clients.add(ws)
    try:
        while True:
            line = await ws.receive_text()
            for client in list(_clients):
                try:
                    await client.send_text(line)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    _clients.discard(client)
    except WebSocketDisconnect:
        pass
    finally:
        _clients.discard(ws)


echo = Starlette(routes=[WebSocketRoute("/ws", _echo)])
chat = Starlette(routes=[WebSocketRoute("/ws", _chat)])

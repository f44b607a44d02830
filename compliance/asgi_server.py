"""Echo app for Autobahn|Testsuite's fuzzingclient, served by uvicorn with epws as ``--ws``.

    python compliance/asgi_server.py --port 9002            # epws.asgi
    python compliance/asgi_server.py --port 9002 --ws wsproto   # uvicorn's own, to compare

The app is a plain ASGI callable (no framework): it accepts, and sends every message
back as received, text as text and binary as binary. What the suite tests is then
uvicorn's HTTP handling, the hand-over to the WebSocket implementation, and that
implementation. Messages up to 16 MiB are accepted (the suite's 9.* cases), as in
``server.py``; keepalive pings are off so they cannot interleave with the suite's cases.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

MAX_SIZE = 16 * 1024 * 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return  # lifespan is off; plain HTTP is not served
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument(
        "--ws",
        default="epws.asgi:WebSocketProtocol",
        help="uvicorn's --ws: epws.asgi:WebSocketProtocol (default), wsproto, websockets-sansio",
    )
    parser.add_argument("--loop", default="asyncio", help="uvicorn's --loop (asyncio, uvloop)")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ws=args.ws,
        loop=args.loop,
        lifespan="off",
        ws_max_size=MAX_SIZE,
        ws_ping_interval=None,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

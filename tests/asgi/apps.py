"""The apps under test: Starlette and FastAPI endpoints, and a bare ASGI callable.

Each factory returns a fresh app and a :class:`Seen` the app writes what it observed
into (the scope, the disconnect event, errors), so tests assert on what the app saw as
well as on what the client got.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@dataclass
class Seen:
    """What the app observed; ``event`` is set whenever something is recorded."""

    scopes: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[tuple[int, str]] = field(default_factory=list)
    send_errors: list[BaseException] = field(default_factory=list)
    finished: int = 0
    sent: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    probe: Any = None  # set by a test: called by the app, its results kept in probed
    probed: list[Any] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self) -> None:
        self.event.set()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.event.clear()
                await self.event.wait()


def starlette_app() -> tuple[Starlette, Seen]:
    seen = Seen()

    async def echo(ws: WebSocket) -> None:
        seen.scopes.append(dict(ws.scope))
        subprotocol = next((p for p in ws.scope["subprotocols"] if p.startswith("chat.")), None)
        await ws.accept(subprotocol=subprotocol)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    seen.disconnects.append((message["code"], message.get("reason") or ""))
                    return
                if message.get("text") is not None:
                    text = message["text"]
                    if text.startswith("close "):
                        _, code, reason = text.split(" ", 2)
                        await ws.close(int(code), reason)
                        continue
                    if text == "raise":
                        raise RuntimeError("the app failed after accepting")
                    await ws.send_text(text)
                else:
                    await ws.send_bytes(message["bytes"])
        finally:
            seen.finished += 1
            seen.note()

    async def headers(ws: WebSocket) -> None:
        await ws.accept(headers=[(b"x-extra", b"yes"), (b"set-cookie", b"session=abc")])
        await ws.send_text("hello")
        await ws.close()

    async def forbidden(ws: WebSocket) -> None:
        await ws.close()

    async def deny(ws: WebSocket) -> None:
        await ws.send_denial_response(
            PlainTextResponse("no entry\n", status_code=401, headers={"www-authenticate": "Token"})
        )

    async def fail_before_accept(ws: WebSocket) -> None:
        raise RuntimeError("the app failed before accepting")

    async def idle(ws: WebSocket) -> None:
        # Accepts and waits for the end; records how it ended (shutdown, client gone).
        await ws.accept()
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect as exc:
            seen.disconnects.append((exc.code, exc.reason or ""))
        finally:
            seen.finished += 1
            seen.note()

    async def push(ws: WebSocket) -> None:
        # Sends until the client is gone; the send error is what the app sees.
        await ws.accept()
        try:
            chunk = "x" * 65536
            for _ in range(100_000):
                await ws.send_text(chunk)
                seen.sent += 1
        except BaseException as exc:
            seen.send_errors.append(exc)
            raise
        finally:
            seen.finished += 1
            seen.note()

    app = Starlette(
        routes=[
            WebSocketRoute("/echo", echo),
            WebSocketRoute("/headers", headers),
            WebSocketRoute("/forbidden", forbidden),
            WebSocketRoute("/deny", deny),
            WebSocketRoute("/fail", fail_before_accept),
            WebSocketRoute("/idle", idle),
            WebSocketRoute("/push", push),
        ]
    )
    return app, seen


def fastapi_app() -> tuple[FastAPI, Seen]:
    seen = Seen()
    app = FastAPI()

    @app.websocket("/items/{item_id}")
    async def items(websocket: FastAPIWebSocket, item_id: int, q: str = "") -> None:
        await websocket.accept()
        seen.scopes.append(dict(websocket.scope))
        try:
            while True:
                data = await websocket.receive_json()
                await websocket.send_json({"item_id": item_id, "q": q, "echo": data})
        except WebSocketDisconnect as exc:
            seen.disconnects.append((exc.code, exc.reason or ""))
        finally:
            seen.finished += 1
            seen.note()

    return app, seen


def raw_app() -> tuple[Any, Seen]:
    """A bare ASGI app, for what frameworks would hide: chunked denial bodies, bad events."""
    seen = Seen()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        seen.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/chunked-denial":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 418,
                    "headers": [(b"content-type", b"text/plain"), (b"x-teapot", b"1")],
                }
            )
            for part in (b"I'm ", b"a ", b"teapot"):
                await send(
                    {"type": "websocket.http.response.body", "body": part, "more_body": True}
                )
            await send({"type": "websocket.http.response.body", "body": b"", "more_body": False})
        elif path == "/wrong-subprotocol":
            try:
                await send({"type": "websocket.accept", "subprotocol": "never-offered"})
            except Exception as exc:
                seen.send_errors.append(exc)
                raise
        elif path == "/hold":
            # Accepts, reads nothing until the test says so, then counts the messages.
            await send({"type": "websocket.accept"})
            await seen.release.wait()
            count = 0
            while count < 200:
                message = await receive()
                assert message["type"] == "websocket.receive", message
                count += 1
            await send({"type": "websocket.send", "text": str(count)})
            await send({"type": "websocket.close"})
        elif path == "/slow-accept":
            # Accepts late, then echoes one message: frames sent before the 101 wait.
            await asyncio.sleep(0.3)
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": "got " + message["text"]})
            await send({"type": "websocket.close"})
        elif path == "/burst":
            # 100 messages in one step of the task (no await that waits between them),
            # the test's probe called before and after it, then once more after the
            # client's answer, which it sends once it has all 100.
            await send({"type": "websocket.accept"})
            seen.probed.append(seen.probe())
            for i in range(100):
                await send({"type": "websocket.send", "text": str(i)})
            seen.probed.append(seen.probe())
            message = await receive()
            seen.probed.append(seen.probe())
            await send({"type": "websocket.send", "text": "got " + message["text"]})
            await send({"type": "websocket.close"})
        elif path == "/accept-and-return":
            await send({"type": "websocket.accept"})
        elif path == "/return-early":
            return
        seen.note()

    return app, seen

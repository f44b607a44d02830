"""A FastAPI app with a page and a WebSocket endpoint, for the browser test.

Served by the ``uvicorn`` command itself: ``uvicorn tests.asgi.browser_app:app --ws
epws.asgi:WebSocketProtocol``.
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>epws under uvicorn</title>
<div id="out"></div><div id="closed"></div>
<script>
const ws = new WebSocket(`ws://${location.host}/ws`, ["chat.v1"]);
ws.onopen = () => ws.send("hello from the browser " + "x".repeat(300));
ws.onmessage = (e) => {
  document.getElementById("out").textContent =
    e.data.slice(0, 28) + "|" + ws.protocol + "|" + ws.extensions;
  ws.close(4000, "done");
};
ws.onclose = (e) => {
  document.getElementById("closed").textContent = e.code + " " + e.wasClean;
};
</script>
"""

app = FastAPI()


@app.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol="chat.v1")
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text("echo: " + text)
    except WebSocketDisconnect as exc:
        print(f"disconnect {exc.code} {exc.reason}", flush=True)

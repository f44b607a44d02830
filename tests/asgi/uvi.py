"""Real uvicorn, in-process, on a real socket: the server half of the ASGI tests.

:func:`running` serves an ASGI app with one of the WebSocket implementations in
:data:`IMPLEMENTATIONS` (epws's, and uvicorn's own two maintained ones, so the same
assertions run against each) on 127.0.0.1 port 0, and stops it through uvicorn's own
graceful shutdown (``should_exit``), which is what a SIGTERM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from epws.asgi import WebSocketProtocol

#: ``--ws`` values: epws's class, and uvicorn's implementations by their names.
IMPLEMENTATIONS: dict[str, Any] = {
    "epws": WebSocketProtocol,
    "websockets-sansio": "websockets-sansio",
    "wsproto": "wsproto",
}


@dataclass
class Running:
    server: uvicorn.Server
    port: int
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def shutdown(self, timeout: float = 20.0) -> None:
        """uvicorn's graceful shutdown, bounded in time."""
        self.server.should_exit = True
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def running(app: Any, ws: Any = "epws", **options: Any) -> AsyncIterator[Running]:
    """Serve ``app`` with uvicorn and the implementation ``ws`` (a key of IMPLEMENTATIONS)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options.setdefault("lifespan", "off")
    config = uvicorn.Config(
        app,
        ws=IMPLEMENTATIONS.get(ws, ws),
        log_config=None,
        log_level="warning",
        loop="none",
        **options,
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers while serving; tests stop it with should_exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield Running(server, port, task)
    finally:
        if not task.done():
            server.should_exit = True
            try:
                await asyncio.wait_for(task, 20)
            finally:
                sock.close()
        else:
            sock.close()

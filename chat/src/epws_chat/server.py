"""A running chat server, assembled: :func:`start_chat` puts the hub, the WebSocket
server (:mod:`epws_chat.session`, :mod:`epws_chat.routes`), the write-wait sweep and
the ops listener (:mod:`epws_chat.ops`) together on the running loop, and :class:`Chat` holds
them and closes them in order.

Unlike the Go original, which has no shutdown path, :meth:`Chat.close` closes every
connection with 1001 (going away) within a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import epws

from .auth import ExpiryQueue, TokenAuth
from .brokers import Broker, clean_text
from .client import clean_name, clean_room, normalize
from .hub import Hub
from .limits import FLOODABLE, Gate, RateLimitedLog, install_log_limits
from .metrics import ChatCollector, Counters, render
from .ops import Routes, serve_ops
from .routes import STATIC_DIR, make_process_request
from .session import make_expiry, make_handler, make_upgrader
from .settings import Settings

__all__ = ["Chat", "make_routes", "start_chat"]


@dataclass(slots=True)
class Chat:
    """A running chat server: the WebSocket server and its hub."""

    server: epws.Server
    hub: Hub
    settings: Settings
    scheme: str
    gate: Gate
    log_filters: list[RateLimitedLog]
    expiry: ExpiryQueue
    stats: Counters | None
    ops: asyncio.Server | None = None
    closing: bool = False

    @property
    def ops_port(self) -> int:
        """The port of the ops listener (``--ops-addr``); 0 when there is none."""
        if self.ops is None or not self.ops.sockets:
            return 0
        return int(self.ops.sockets[0].getsockname()[1])

    def not_ready(self) -> str:
        """Why this process should get no new connections ("" when it should)."""
        if self.closing:
            return "shutting down"
        if not getattr(self.hub.broker, "connected", True):
            return "the broker is not connected"
        return ""

    def gauges(self) -> dict[str, float]:
        """The live figures of ``/metrics`` and ``/api/stats``."""
        return {
            "connections": len(self.hub),
            "rooms": len(self.hub.rooms),
            "broker_connected": 0 if self.not_ready() == "the broker is not connected" else 1,
        }

    @property
    def port(self) -> int:
        return self.server.port

    async def close(self, *, timeout: float = 10.0) -> None:
        """Close every connection with 1001 (going away), within about ``timeout`` seconds.

        Clients that do not answer the close frame in time are dropped, so this
        always ends: a stuck client cannot hold the process.
        """
        loop = asyncio.get_running_loop()
        server = self.server
        self.closing = True
        if self.ops is not None:
            self.ops.close()

        def drop_all() -> None:
            for conn in list(server.connections):
                conn.abort()

        timer = loop.call_later(timeout, drop_all)
        self.expiry.close()
        for log_filter, name in zip(self.log_filters, FLOODABLE, strict=False):
            logging.getLogger(name).removeFilter(log_filter)
        try:
            await server.close(1001, "going away", timeout=timeout)
        finally:
            timer.cancel()
            await self.hub.close()


async def start_chat(
    settings: Settings | None = None,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    static_dir: Path = STATIC_DIR,
    sock: socket.socket | None = None,
    broker: Broker | None = None,
    reuse_port: bool = False,
    gate: Gate | None = None,
    log_rate: float = 20.0,
    auth: TokenAuth | None = None,
    metrics: bool = True,
    api_key: str | None = None,
    ops_addr: tuple[str | None, int] | None = None,
) -> Chat:
    """Start a chat server on the running loop (port 0: any free port).

    ``gate`` caps connections (default: :class:`~epws_chat.limits.Gate`'s caps);
    ``log_rate`` bounds the per-request and per-connection log lines per second;
    ``auth`` requires a connection token (None: anonymous, as the Go original);
    ``metrics`` False counts nothing (``--metrics off``); ``ops_addr`` (host, port)
    opens the ops listener (:mod:`epws_chat.ops`), whose ``/api`` routes need
    ``api_key``.
    """
    settings = settings or Settings()
    gate = gate if gate is not None else Gate()
    stats = Counters() if metrics else None
    hub = Hub(broker, send_limit=settings.send_limit, write_wait=settings.write_wait, stats=stats)
    await hub.start()
    expiry = make_expiry(hub, stats)
    server = await epws.serve(
        make_handler(hub, settings, gate, auth, stats, expiry),
        host,
        None if sock is not None else port,
        upgrader=make_upgrader(settings, stats),
        process_request=make_process_request(
            static_dir, gate, auth, stats, lambda: chat.not_ready()
        ),
        ssl=ssl_context,
        sock=sock,
        reuse_port=reuse_port,
    )
    if settings.socket_send_buffer:
        # On the listening sockets: Linux copies a listener's SO_SNDBUF into each socket
        # it accepts, so no connection pays a system call (or, on uvloop, a socket
        # object kept by its transport) for it.
        for listening in server.sockets:
            with contextlib.suppress(OSError):
                listening.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer
                )
    # Go's write deadline in a room that fell silent (no batch checks it there).
    hub.sweep_every(settings.write_wait / 2)
    filters = install_log_limits(log_rate) if log_rate > 0 else []
    scheme = "https" if ssl_context is not None else "http"
    chat = Chat(server, hub, settings, scheme, gate, filters, expiry, stats)
    if ops_addr is not None:
        chat.ops = await serve_ops(make_routes(chat, api_key), *ops_addr)
    return chat


def make_routes(chat: Chat, api_key: str | None) -> Routes:
    """The ops routes of one chat process (:mod:`epws_chat.ops`)."""
    hub = chat.hub
    stats = chat.stats

    async def publish(room: str, name: str, text: str) -> str | None:
        failed: list[str] = []
        hub.broadcast(
            clean_text(normalize(text)),
            room=room,
            name=clean_name(name),
            on_error=lambda exc: failed.append(str(exc)),
        )
        await asyncio.sleep(0)  # a broker that fails at once has said so now
        return failed[0] if failed else None

    async def history(room: str, after: str | None, limit: int) -> tuple[list[Any], bool]:
        page = await hub.broker.page(room, after=after, limit=limit)
        return [json.loads(m.json()) for m in page.messages], page.complete

    async def presence(room: str) -> dict[str, int]:
        return await hub.members(room)

    async def figures() -> dict[str, Any]:
        out: dict[str, Any] = dict(chat.gauges())
        if stats is not None:
            out.update(stats.snapshot())
        return out

    async def metrics() -> bytes:
        assert stats is not None
        return render(ChatCollector(stats, chat.gauges))

    return Routes(
        api_key=api_key,
        publish=publish,
        history=history,
        presence=presence,
        stats=figures,
        metrics=metrics if stats is not None else None,
        ready=chat.not_ready,
        clean_room=clean_room,
    )

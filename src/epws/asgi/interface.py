"""The types of what :class:`~epws.asgi.WebSocketProtocol` talks to: uvicorn and the app.

uvicorn is never imported (``import epws.asgi`` costs nothing without it): the
attributes of its config and server state this package uses are written down here
as :class:`typing.Protocol` classes, which mypy checks the class's use against.
The app's side is the ASGI callable, its scope and messages, and
:class:`ClientDisconnected`, the one exception the app sees from ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Awaitable, Callable, MutableMapping, MutableSet
from typing import Any

__all__ = ["ClientDisconnected", "UvicornConfig", "UvicornServerState"]

# uvicorn's own implementations log their access lines and the app's failures here;
# using the same logger keeps uvicorn's logging configuration working unchanged.
logger = logging.getLogger("uvicorn.error")

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
# An app returns None; uvicorn logs anything else, and so does WebSocketProtocol.
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[object],
]


class UvicornConfig(typing.Protocol):
    """The attributes of ``uvicorn.Config`` this package reads."""

    loaded: bool
    loaded_app: Any
    root_path: str
    asgi_version: str
    ws_max_size: int
    ws_max_queue: int
    ws_ping_interval: float | None
    ws_ping_timeout: float | None
    ws_per_message_deflate: bool

    def load(self) -> None: ...


class UvicornServerState(typing.Protocol):
    """The attributes of ``uvicorn.server.ServerState`` this package uses.

    ``connections`` holds every protocol object whose TCP connection is open (uvicorn's
    graceful shutdown calls their ``shutdown()`` and waits for the set to empty);
    ``tasks`` the running apps (it waits for them too); ``default_headers`` the
    ``server`` and ``date`` headers of every response.
    """

    connections: MutableSet[Any]
    tasks: MutableSet[asyncio.Task[None]]
    default_headers: list[tuple[bytes, bytes]]


class ClientDisconnected(OSError):
    """Raised by ``send`` when the connection is closed (ASGI spec 2.4).

    An :class:`OSError`, as the spec asks, so frameworks map it to their own
    disconnect (Starlette raises ``WebSocketDisconnect``). When it escapes the app it
    is not logged: the client leaving is not an error of the app.
    """

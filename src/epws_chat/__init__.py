"""epws_chat: the web chat of gorilla/websocket's example, on epws.

A :class:`~epws_chat.hub.Hub` owns the set of connected clients and broadcasts every
message to all of them; each :class:`~epws_chat.client.Client` runs a read pump and a
write pump over its connection; :mod:`epws_chat.app` holds the HTTP routes and the
``epws-chat`` command. The library is used through its public API only.
"""

from __future__ import annotations

from .app import Chat, main, start_chat
from .client import Client, Settings, serve_ws
from .hub import Hub

__all__ = ["Chat", "Client", "Hub", "Settings", "main", "serve_ws", "start_chat"]

"""epws_chat: the web chat of gorilla/websocket's example, on epws, grown up.

A :class:`~epws_chat.hub.Hub` owns the rooms and their clients and broadcasts every
message to a room's members, coalesced per loop iteration; each
:class:`~epws_chat.client.Client` is one connection, read by its read pump;
a :class:`~epws_chat.brokers.Broker` carries messages between processes (memory by
default, Redis to share rooms). :mod:`epws_chat.server` assembles a running chat
(:func:`~epws_chat.server.start_chat`) from the public port's HTTP routes
(:mod:`epws_chat.routes`) and the WebSocket handler (:mod:`epws_chat.session`);
:mod:`epws_chat.cli` is the ``epws-chat`` command, :mod:`epws_chat.options` its
options. The library is used through its public API only.
"""

from __future__ import annotations

from .brokers import Broker, BrokerError, ChatMessage, MemoryBroker
from .cli import main
from .client import Client
from .hub import Hub
from .server import Chat, start_chat
from .settings import Settings

__all__ = [
    "Broker",
    "BrokerError",
    "Chat",
    "ChatMessage",
    "Client",
    "Hub",
    "MemoryBroker",
    "Settings",
    "main",
    "start_chat",
]

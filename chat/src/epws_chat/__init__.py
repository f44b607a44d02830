"""epws_chat: the web chat of gorilla/websocket's example, on epws, grown up.

A :class:`~epws_chat.hub.Hub` owns the rooms and their clients and broadcasts every
message to a room's members, coalesced per loop iteration; each
:class:`~epws_chat.client.Client` is one connection, read by its read pump;
a :class:`~epws_chat.brokers.Broker` carries messages between processes (memory by
default, Redis to share rooms); :mod:`epws_chat.app` holds the HTTP routes and the
``epws-chat`` command. The library is used through its public API only.
"""

from __future__ import annotations

from .app import Chat, main, start_chat
from .brokers import Broker, BrokerError, ChatMessage, MemoryBroker
from .client import Client, Settings
from .hub import Hub

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

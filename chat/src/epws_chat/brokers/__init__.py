"""Brokers: how a chat message travels from the process that received it to every
process with members in its room, and where a room's history lives.

The hub talks to a :class:`~epws_chat.brokers.base.Broker` only; nothing else in the
chat knows which one runs. The pattern is the one of Centrifugo, Socket.IO adapters
or Phoenix PubSub: each process fans out to its own connections, and the broker
carries each message once per process.

* :mod:`~epws_chat.brokers.base`: the interface, the message record, the errors and
  the one message-id parser every broker and every client request goes through.
* :mod:`~epws_chat.brokers.memory`: :class:`MemoryBroker` (the default), one process;
  delivery is a function call, the history a bounded ring per room.
* :mod:`~epws_chat.brokers.redis`: ``RedisBroker``, many processes or machines; Redis
  pub/sub for live fan-out, a capped stream per room for history. It is split by job:
  :mod:`~epws_chat.brokers.wire` (the bytes in Redis),
  :mod:`~epws_chat.brokers.subscriptions` (one record per room, made live by one
  subscribe sequence), :mod:`~epws_chat.brokers.listener` (the supervised pub/sub
  reader and its reconnections), :mod:`~epws_chat.brokers.publisher` (batched
  publishing) and :mod:`~epws_chat.brokers.presence` (who is in a room on every
  process, right after a crash too).

This package imports only the memory broker; ``epws_chat.brokers.redis`` needs the
``redis`` package (the ``redis`` extra).
"""

from __future__ import annotations

from .base import (
    BadEntry,
    Broker,
    BrokerError,
    BrokerUnsure,
    ChatMessage,
    Page,
    clean_text,
    message_id_key,
)
from .memory import MemoryBroker

__all__ = [
    "BadEntry",
    "Broker",
    "BrokerError",
    "BrokerUnsure",
    "ChatMessage",
    "MemoryBroker",
    "Page",
    "clean_text",
    "message_id_key",
]

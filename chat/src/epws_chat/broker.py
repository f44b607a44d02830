"""Brokers: how a chat message travels from the process that received it to every
process with members in its room, and where a room's history lives.

The hub talks to a :class:`Broker` only; nothing else in the chat knows which one
runs. The pattern is the one of Centrifugo, Socket.IO adapters or Phoenix PubSub:
each process fans out to its own connections, and the broker carries each message
once per process.

* :class:`MemoryBroker` (the default): one process; delivery is a function call, the
  history a bounded ring per room.
* ``RedisBroker`` (:mod:`epws_chat.redis_broker`): many processes or machines; Redis
  pub/sub for live fan-out, a capped stream per room for history.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Broker",
    "BrokerError",
    "ChatMessage",
    "MemoryBroker",
    "message_id_key",
]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat line, as stored and delivered.

    Attributes:
        id: ``"<milliseconds>-<sequence>"``, increasing within a room (the format of
            Redis stream ids), so a page can ask for what it missed after the last
            id it saw and drop what it has already shown.
        room: the room's name.
        name: the sender's name ("" for the seed's anonymous clients).
        text: the normalized text (no newline: safe to join batches with "\\n").
        time: server time when the message was accepted, in Unix seconds.
    """

    id: str
    room: str
    name: str
    text: str
    time: float

    def json(self) -> str:
        """The line sent to ``epws.chat.v1`` clients."""
        return json.dumps(
            {
                "type": "message",
                "id": self.id,
                "room": self.room,
                "name": self.name,
                "text": self.text,
                "time": self.time,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


def message_id_key(message_id: str) -> tuple[int, int]:
    """Order of two ids: ``"12-3" < "12-10" < "13-0"``; ValueError if malformed."""
    ms, sep, seq = message_id.partition("-")
    if not sep:
        raise ValueError(f"bad message id {message_id!r}")
    return int(ms), int(seq)


class BrokerError(Exception):
    """The broker cannot take or give messages now (e.g. Redis is unreachable)."""


Deliver = Callable[[ChatMessage], None]
OnError = Callable[[BrokerError], None]


class Broker(Protocol):
    """What the hub needs from the outside world.

    ``deliver`` (given to :meth:`start`) is called on the event loop for every
    message of a subscribed room, in the room's order, exactly once per process.
    """

    #: True when several processes can share the broker (``--workers`` needs it).
    shared: bool

    async def start(self, deliver: Deliver) -> None:
        """Connect; from now on messages of subscribed rooms go to ``deliver``."""
        ...

    async def close(self) -> None:
        """Disconnect; nothing is delivered afterwards."""
        ...

    def subscribe(self, room: str) -> None:
        """This process has its first member in ``room``: start receiving it."""
        ...

    def unsubscribe(self, room: str) -> None:
        """This process has no member in ``room`` any more: stop receiving it."""
        ...

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        """Send a message to ``room`` without waiting; failures go to ``on_error``.

        Never blocks: a broker that must talk to a server batches the publishes of
        one loop iteration and reports a failed batch to each sender.
        """
        ...

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` of the room's latest messages, oldest first; only those
        with an id after ``after`` when given. Raises :class:`BrokerError`."""
        ...


class MemoryBroker:
    """One process, no server: delivery is immediate, history a ring per room."""

    shared = False

    __slots__ = ("_deliver", "_history", "_last", "_rings")

    def __init__(self, history: int = 100) -> None:
        self._history = history
        self._rings: dict[str, collections.deque[ChatMessage]] = {}
        self._deliver: Deliver | None = None
        self._last = (0, 0)

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    def subscribe(self, room: str) -> None:
        """Nothing to do: every message published here is delivered here."""

    def unsubscribe(self, room: str) -> None:
        """Nothing to do; the room's history stays (bounded) for later members."""

    def _next_id(self, now: float) -> str:
        ms = int(now * 1000)
        last_ms, last_seq = self._last
        seq = last_seq + 1 if ms <= last_ms else 0
        ms = max(ms, last_ms)
        self._last = (ms, seq)
        return f"{ms}-{seq}"

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        deliver = self._deliver
        if deliver is None:
            on_error(BrokerError("the chat is shutting down"))
            return
        now = time.time()
        message = ChatMessage(self._next_id(now), room, name, text, now)
        if self._history > 0:
            ring = self._rings.get(room)
            if ring is None:
                ring = self._rings[room] = collections.deque(maxlen=self._history)
            ring.append(message)
        deliver(message)

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        ring = self._rings.get(room)
        if not ring or limit <= 0:
            return []
        messages = list(ring)
        if after is not None:
            key = message_id_key(after)
            messages = [m for m in messages if message_id_key(m.id) > key]
        return messages[-limit:]

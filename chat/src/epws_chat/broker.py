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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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


#: An id as both brokers write it: two runs of ASCII digits (Redis's stream id format).
#: ``int()`` alone would also take "1_0", " 1", "+1" or non-ASCII digits, which Redis
#: refuses: ONE parser for every broker and for what clients send.
_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = (1 << 64) - 1


def message_id_key(message_id: str | bytes) -> tuple[int, int]:
    """Order of two ids: ``"12-3" < "12-10" < "13-0"``; ValueError if malformed.

    The only id parser of the chat: the memory broker, the Redis broker (live and
    stream entries) and the ``after`` a resuming client sends all go through it, so
    an id one of them accepts is an id every one of them (and Redis) accepts.
    """
    if isinstance(message_id, bytes):
        try:
            message_id = message_id.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"bad message id {message_id!r}") from None
    match = _ID_RE.fullmatch(message_id)
    if match is None:
        raise ValueError(f"bad message id {message_id!r}")
    ms, seq = int(match[1]), int(match[2])
    if ms > _U64 or seq > _U64:
        raise ValueError(f"message id out of range {message_id!r}")
    return ms, seq


_SURROGATES = re.compile("[\ud800-\udfff]")

#: Longest text kept in a message, in characters (a line of a chat, not a file).
MAX_TEXT = 4096


def clean_text(text: str) -> str:
    """Text that may enter the chat: encodable as UTF-8 (lone surrogates, which
    ``json.loads`` lets through from ``"\\ud800"``, become U+FFFD), no newline (the
    batch separator), bounded. Every line a broker stores or delivers passes here, so
    no line can make the encoding of a batch fail."""
    if _SURROGATES.search(text) is not None:
        text = _SURROGATES.sub("\ufffd", text)
    if "\n" in text:
        text = text.replace("\n", " ")
    return text[:MAX_TEXT]


class BadEntry(ValueError):
    """A stored or delivered message that is not in the chat's format (skipped)."""


class BrokerError(Exception):
    """The broker cannot take or give messages now (e.g. Redis is unreachable)."""


class BrokerUnsure(BrokerError):
    """The broker did not confirm a message in time: it may or may not be delivered
    (sent to Redis, which never answered: a pause, a slow network)."""


Deliver = Callable[[ChatMessage], None]
OnError = Callable[[BrokerError], None]
Gap = Callable[[str], None]


@dataclass(slots=True)
class Page:
    """What :meth:`Broker.page` returns: history, and whether a resume is whole.

    Attributes:
        messages: up to ``limit`` of the room's latest messages, oldest first (after
            ``after`` when given).
        complete: for a resume (``after`` given): True when ``messages`` holds EVERY
            message of the room after ``after``; False when some may be missing (the
            gap is longer than ``limit``, older lines were trimmed or expired, the
            history was lost since: a Redis restart without persistence, eviction, a
            new memory broker; or ``after`` names no message of this history).
    """

    messages: list[ChatMessage] = field(default_factory=list)
    complete: bool = True


class Broker(Protocol):
    """What the hub needs from the outside world.

    ``deliver`` (given to :meth:`start`) is called on the event loop for every
    message of a subscribed room, in the room's order, exactly once per process.
    """

    #: True when several processes can share the broker (``--workers`` needs it).
    shared: bool

    async def start(self, deliver: Deliver, gap: Gap | None = None) -> None:
        """Connect; from now on messages of subscribed rooms go to ``deliver``.

        ``gap(room)`` (optional): the broker lost the room's live messages for a
        while (a lost connection) and cannot prove it recovered all of them.
        """
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

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        """:meth:`history`, and whether it covers everything after ``after``."""
        ...


class _Ring:
    """One room's history in the memory broker (one record per room)."""

    __slots__ = ("first", "last_used", "messages", "trimmed")

    def __init__(self, size: int, now: float) -> None:
        self.messages: collections.deque[ChatMessage] = collections.deque(maxlen=size)
        #: Key of the first id of this history: an ``after`` below it predates it.
        self.first: tuple[int, int] | None = None
        #: Key of the newest id pushed out of the ring (None: nothing lost yet).
        self.trimmed: tuple[int, int] | None = None
        self.last_used = now


class MemoryBroker:
    """One process, no server: delivery is immediate, history a ring per room.

    Args:
        history: messages kept per room.
        retention: seconds the history of a room without members is kept after its
            last message (0: as long as the process runs, bounded by ``max_rooms``).
        max_rooms: rooms whose history is kept; past it the history of the room
            without members that was used least recently goes first.

    Without these bounds any valid room name would keep a ring for the life of the
    process, so a client walking through names would grow memory without end.
    """

    shared = False

    __slots__ = ("_active", "_deliver", "_history", "_last", "_max_rooms", "_retention", "_rings")

    def __init__(
        self, history: int = 100, *, retention: float = 86400.0, max_rooms: int = 10_000
    ) -> None:
        if retention < 0 or max_rooms < 1:
            raise ValueError("retention must not be negative and max_rooms must be positive")
        self._history = history
        self._retention = retention
        self._max_rooms = max_rooms
        # Least recently used first: expired and surplus rings are popped from the front.
        self._rings: collections.OrderedDict[str, _Ring] = collections.OrderedDict()
        self._active: set[str] = set()
        self._deliver: Deliver | None = None
        self._last = (0, 0)

    async def start(self, deliver: Deliver, gap: Gap | None = None) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    def __len__(self) -> int:
        """Rooms whose history is kept (what the retention bounds)."""
        return len(self._rings)

    def subscribe(self, room: str) -> None:
        """Every message published here is delivered here; the room's history is
        kept while it has members."""
        self._active.add(room)

    def unsubscribe(self, room: str) -> None:
        """The room's history stays for later members until its retention runs out."""
        self._active.discard(room)
        ring = self._rings.get(room)
        if ring is not None:
            ring.last_used = time.monotonic()
            self._rings.move_to_end(room)
        self._expire()

    def _expire(self) -> None:
        """Drop the history of rooms without members past retention, or past max_rooms.

        The rings are kept least recently used first, so this stops at the first one
        that is neither surplus nor expired: cheap when there is nothing to drop.
        """
        rings = self._rings
        horizon = time.monotonic() - self._retention if self._retention else float("-inf")
        excess = len(rings) - self._max_rooms
        spare: list[str] = []
        for room, ring in rings.items():
            if excess <= 0 and ring.last_used >= horizon:
                break
            if room not in self._active:
                spare.append(room)
                excess -= 1
        for room in spare:
            del rings[room]

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
        message = ChatMessage(self._next_id(now), room, name, clean_text(text), now)
        if self._history > 0:
            mono = time.monotonic()
            ring = self._rings.get(room)
            if ring is None:
                ring = self._rings[room] = _Ring(self._history, mono)
                ring.first = message_id_key(message.id)
                self._expire()
            else:
                ring.last_used = mono
                self._rings.move_to_end(room)
            messages = ring.messages
            if len(messages) == messages.maxlen:
                ring.trimmed = message_id_key(messages[0].id)
            messages.append(message)
        deliver(message)

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        return (await self.page(room, after=after, limit=limit)).messages

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        self._expire()
        ring = self._rings.get(room)
        key = message_id_key(after) if after is not None else None
        if ring is None or not ring.messages:
            # No history: a resume from an id is whole only if nothing was ever said.
            return Page([], key is None or (self._last == (0, 0) and ring is None))
        messages = list(ring.messages)
        if key is not None:
            messages = [m for m in messages if message_id_key(m.id) > key]
        if limit <= 0:
            return Page([], key is None)
        page = messages[-limit:]
        complete = True
        if key is not None:
            top = message_id_key(ring.messages[-1].id)
            complete = (
                len(messages) <= limit
                and ring.first is not None
                and key >= ring.first
                and (ring.trimmed is None or key >= ring.trimmed)
                and key <= top
            )
        return Page(page, complete)

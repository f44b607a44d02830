"""MemoryBroker: one process, no server; delivery is a function call, the history a
bounded ring per room (the default broker)."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from .base import (
    BrokerError,
    ChatMessage,
    Deliver,
    Gap,
    OnError,
    Page,
    PresenceHost,
    clean_text,
    message_id_key,
)

if TYPE_CHECKING:
    from ..metrics import Counters

__all__ = ["MemoryBroker"]

#: Nobody on another process (there is none).
_NOBODY: Mapping[str, int] = MappingProxyType({})


class _IdClock:
    """The ids of every memory broker of the process: ``<ms>-<seq>``, increasing.

    One clock for the process, not one per broker: a broker made in the millisecond
    another one gave its last id (a chat restarted in-process, as tests and embedding
    applications do) would otherwise give that same id again, and a resume from the
    old id would take the new message for one already seen and skip it, reported
    whole. A restarted process starts milliseconds after the old one's last id.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = (0, 0)

    def next(self, now: float) -> str:
        ms = int(now * 1000)
        last_ms, last_seq = self.last
        seq = last_seq + 1 if ms <= last_ms else 0
        ms = max(ms, last_ms)  # the wall clock may step back; ids never do
        self.last = (ms, seq)
        return f"{ms}-{seq}"


_IDS = _IdClock()


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

    __slots__ = ("_active", "_deliver", "_history", "_max_rooms", "_retention", "_rings", "_said")

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
        self._said = False  # whether anything was ever published here

    async def start(
        self,
        deliver: Deliver,
        gap: Gap | None = None,
        *,
        stats: Counters | None = None,
        presence: PresenceHost | None = None,
    ) -> None:
        """Delivery is a function call: no connection, nothing to time or count, and
        no other process to tell about presence."""
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

    def presence_changed(self, room: str, name: str) -> None:
        """One process: the hub's own counts are the whole picture."""

    def remote_members(self, room: str) -> Mapping[str, int]:
        return _NOBODY

    async def read_presence(self, room: str) -> dict[str, int]:
        return {}

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        deliver = self._deliver
        if deliver is None:
            on_error(BrokerError("the chat is shutting down"))
            return
        now = time.time()
        self._said = True
        message = ChatMessage(_IDS.next(now), room, name, clean_text(text), now)
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
            return Page([], key is None or (not self._said and ring is None))
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

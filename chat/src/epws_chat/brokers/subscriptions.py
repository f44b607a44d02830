"""The Redis broker's subscriptions: one record per room with local members, made
live by ONE subscribe sequence, whether the room is new or the connection is.

A room is *ready* once this process receives its live messages and knows the newest
id it has delivered, from which a reconnection fills the gap. Publishes and history
reads for a room wait (bounded) until it is: a client that joins and speaks at once
must see its own line, as with the memory broker.

The sequence (:meth:`Subscriptions.run`, one task per pub/sub connection, started and
supervised by the listener): for every room that is not ready, SUBSCRIBE; a barrier
(the subscriptions are active); read each room's stream (a room this process had
before: everything after its last id, to fill the gap; a new room: its newest id)
and its presence (the other processes' members); a second barrier (every live
message up to those reads has arrived). Live messages and presence changes that
arrive meanwhile are held in the room's record and applied after the reads, in
order and without duplicates. The same sequence serves a room that gets its first
member and every room after a reconnection, so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from .base import BadEntry, ChatMessage, Deliver, Gap, message_id_key
from .wire import (
    IdKey,
    Keys,
    PresenceDelta,
    decode_payload,
    decode_presence,
    decode_stream,
    is_complete,
    is_presence,
    top_id,
)

if TYPE_CHECKING:
    from .presence import Presence, RemoteEntry
    from .publisher import Pending

__all__ = ["MAX_FILL", "RoomRecord", "Subscriptions"]

logger = logging.getLogger("epws_chat.redis")

#: Largest number of missed messages fetched per room after a reconnect.
MAX_FILL = 10_000


class Link(Protocol):
    """What the subscriptions need from the pub/sub connection's owner (the listener)."""

    async def barrier(self, conn: AbstractConnection | None) -> None:
        """Return once every message Redis sent on ``conn`` before now was handled."""
        ...


class RoomRecord:
    """Everything the broker knows about one room with local members.

    One record instead of parallel dicts, so joining, leaving and re-joining cannot
    leave them out of step: a re-joined room is a NEW record, never ready by accident.

    Attributes:
        name: the room.
        channel: its pub/sub channel.
        log: its stream's key.
        ready: set once the subscription is live and ``last`` is known.
        last: the newest id delivered (key, raw), from which a reconnection fills the
            gap (None: the room has not been live yet).
        held: live messages and presence changes received while the subscribe
            sequence runs (else None).
        parked: publishes waiting for the room to be ready (the publisher's; else None).
        park_timer: when the parked publishes go out anyway (one ``timeout`` after
            the first).
        remote: the room's members on each OTHER process, by process id
            (:mod:`~epws_chat.brokers.presence`'s).
        remote_total: the same, summed by name.
    """

    __slots__ = (
        "channel",
        "held",
        "last",
        "log",
        "name",
        "park_timer",
        "parked",
        "ready",
        "remote",
        "remote_total",
    )

    def __init__(self, name: str, keys: Keys) -> None:
        self.name = name
        self.channel = keys.channel(name)
        self.log = keys.log(name)
        self.ready = asyncio.Event()
        self.last: tuple[IdKey, bytes] | None = None
        self.held: list[ChatMessage | PresenceDelta] | None = None
        self.parked: list[Pending] | None = None
        self.park_timer: asyncio.TimerHandle | None = None
        self.remote: dict[str, RemoteEntry] = {}
        self.remote_total: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<RoomRecord {self.name} {'ready' if self.ready.is_set() else 'not ready'}>"

    def advance(self, raw: bytes) -> None:
        """``raw`` was seen (delivered, or the stream's newest): nothing at or below it
        is delivered again."""
        key = message_id_key(raw)
        if self.last is None or key > self.last[0]:
            self.last = (key, raw)


class Subscriptions:
    """The rooms with local members, their records, and the task that makes them live.

    Args:
        redis: the command connection pool (stream reads).
        keys: key and channel names.
        timeout: seconds one subscribe sequence may take.

    Attributes:
        rooms: the record of each room with local members.
        channels: the same records by channel (the listener's lookup).
        sent: the channels subscribed on the current connection (a room left may still
            be there until its UNSUBSCRIBE is sent).
        recovered: messages delivered from the streams after reconnections.
        bad: malformed entries met (pub/sub payloads and stream entries), skipped.
        deliver: where messages go (the hub), None once closed.
        gap: told when a room's gap cannot be proven whole after a reconnection.
        on_ready: called when a record with parked publishes becomes ready or is
            dropped (the publisher sends them).
        presence: reads and applies the other processes' presence (None: not shared).
    """

    def __init__(self, redis: Redis, keys: Keys, *, timeout: float) -> None:
        self.redis = redis
        self.keys = keys
        self.timeout = timeout
        self.rooms: dict[str, RoomRecord] = {}
        self.channels: dict[bytes, RoomRecord] = {}
        self.sent: set[bytes] = set()
        self.recovered = 0
        self.bad = 0
        self.deliver: Deliver | None = None
        self.gap: Gap | None = None
        self.on_ready: Callable[[RoomRecord], None] | None = None
        self.link: Link | None = None
        self.presence: Presence | None = None
        self._dirty = asyncio.Event()

    # ------------------------------------------------------------- membership

    def add(self, room: str) -> None:
        """The process has its first member in ``room``: a new record, not ready."""
        if room in self.rooms:
            return
        record = RoomRecord(room, self.keys)
        self.rooms[room] = record
        self.channels[record.channel] = record
        self._dirty.set()

    def remove(self, room: str) -> None:
        """The process has no member in ``room`` any more: its record goes (and with
        it its last id: no gap to fill), its UNSUBSCRIBE follows."""
        record = self.rooms.pop(room, None)
        if record is None:
            return
        self.channels.pop(record.channel, None)
        self._make_ready(record)  # nobody waits for a room without members
        self._dirty.set()

    def _make_ready(self, record: RoomRecord) -> None:
        record.ready.set()
        if record.parked is not None and self.on_ready is not None:
            self.on_ready(record)

    def connection_lost(self) -> None:
        """The pub/sub connection is gone: nothing is subscribed, nothing is ready."""
        self.sent.clear()
        for record in self.rooms.values():
            record.ready.clear()

    # ------------------------------------------------------------- the sequence

    async def run(self, conn: AbstractConnection, on_first: Callable[[int, int], None]) -> None:
        """Keep ``conn``'s subscriptions equal to the rooms with local members.

        The listener runs this as one task per connection and ends it with the
        connection; any error here (a timeout, Redis refusing) ends the connection,
        and the next one resubscribes every room and fills every gap: the one
        recovery path. ``on_first(rooms, recovered)`` is called once, after the
        rooms known at connection time are live.
        """
        first = True
        while True:
            self._dirty.clear()
            rooms, filled = await self._sync(conn)
            if first:
                first = False
                on_first(rooms, filled)
            await self._dirty.wait()

    async def _sync(self, conn: AbstractConnection) -> tuple[int, int]:
        """Rounds of UNSUBSCRIBE and subscribe sequences until nothing is left to do.
        Returns how many rooms were made live and how many messages recovered."""
        rooms = filled = 0
        while True:
            new = [record for record in self.rooms.values() if not record.ready.is_set()]
            gone = [channel for channel in self.sent if channel not in self.channels]
            if not new and not gone:
                return rooms, filled
            if gone:
                self.sent.difference_update(gone)
                await conn.send_command("UNSUBSCRIBE", *gone)
            if new:
                filled += await self._subscribe(conn, new)
                rooms += len(new)

    async def _subscribe(self, conn: AbstractConnection, records: list[RoomRecord]) -> int:
        """THE subscribe sequence (see the module's docstring); returns how many
        messages were recovered from the streams."""
        link, presence = self.link, self.presence
        assert link is not None
        for record in records:
            record.held = []
        try:
            channels = [record.channel for record in records]
            self.sent.update(channels)
            known = [record for record in records if record.last is not None]
            fresh = [record for record in records if record.last is None]
            async with asyncio.timeout(self.timeout):
                await conn.send_command("SUBSCRIBE", *channels)
                await link.barrier(conn)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for record in known:
                        assert record.last is not None
                        pipe.xrange(record.log, record.last[1], count=MAX_FILL + 1)
                        pipe.xinfo_stream(record.log)
                    for record in fresh:
                        pipe.xrevrange(record.log, count=1)
                    if presence is not None:
                        for record in records:
                            presence.queue_read(pipe, record)
                    results: list[Any] = await pipe.execute(raise_on_error=False)
                await link.barrier(conn)
            reads = 2 * len(known) + len(fresh)
            if presence is not None:
                for record, reply in zip(records, results[reads:], strict=True):
                    if isinstance(reply, Exception):
                        # Not a presence hash (someone else's data): no members known.
                        logger.warning("redis broker: room %s: presence: %s", record.name, reply)
                        reply = None
                    if self.rooms.get(record.name) is record:
                        presence.snapshot(record, reply)
            filled = self._fill(known, results[: 2 * len(known)])
            for record, entries in zip(fresh, results[2 * len(known) : reads], strict=True):
                if isinstance(entries, Exception):
                    # The key is not a stream (someone else's data): its publishes fail
                    # loudly; the room still goes live, from the beginning.
                    logger.warning("redis broker: room %s: %s", record.name, entries)
                    entries = None
                if self.rooms.get(record.name) is record:
                    self._release_held(record)
                    record.advance(top_id(entries))
            for record in known:
                if self.rooms.get(record.name) is record:
                    self._release_held(record)
            for record in records:
                if self.rooms.get(record.name) is record:
                    self._make_ready(record)
            return filled
        finally:
            for record in records:
                record.held = None

    def _release_held(self, record: RoomRecord) -> None:
        held, record.held = record.held, None
        presence = self.presence
        for item in held or ():
            if isinstance(item, ChatMessage):
                self._offer(record, item)
            elif presence is not None:
                presence.receive(record, item)

    def _fill(self, records: list[RoomRecord], results: list[Any]) -> int:
        """Deliver what each room's stream holds after the last id delivered.

        ``results`` holds, per room, the stream read from the last id INCLUSIVE and
        ``XINFO STREAM``; when they cannot prove the gap whole (trimmed past it, or
        the stream lost while we were away), the room's members are told.
        """
        count = 0
        for i, record in enumerate(records):
            entries, info = results[2 * i], results[2 * i + 1]
            last = record.last
            if isinstance(entries, Exception):
                entries = []
            whole = last is None or (
                len(entries) <= MAX_FILL and is_complete(last[0], entries, info)
            )
            if self.rooms.get(record.name) is not record:
                continue
            for message in decode_stream(record.name, entries, self.count_bad):
                if self._offer(record, message):
                    count += 1
            if not whole and self.gap is not None:
                logger.warning("redis broker: room %s: messages may have been lost", record.name)
                try:
                    self.gap(record.name)
                except Exception:
                    logger.exception("redis broker: reporting a gap in room %s failed", record.name)
        self.recovered += count
        return count

    # ------------------------------------------------------------- live messages

    def receive(self, channel: bytes, data: object) -> None:
        """One pub/sub message: checked, held or delivered once; never raises.

        A malformed payload (anyone can PUBLISH on the channel) is counted, logged
        and skipped; an error in ``deliver`` is logged: neither may end the listener,
        which would leave the process deaf while it still looks connected.
        """
        record = self.channels.get(channel)
        if record is None:
            return  # a room this process left; its UNSUBSCRIBE is on its way
        item: ChatMessage | PresenceDelta
        try:
            if is_presence(data):
                assert isinstance(data, bytes)
                item = decode_presence(record.name, data)
            else:
                item = decode_payload(record.name, data)
        except BadEntry as exc:
            self.count_bad(exc)
            return
        if record.held is not None:
            record.held.append(item)  # the subscribe sequence hands it on in order
        elif isinstance(item, ChatMessage):
            self._offer(record, item)
        elif self.presence is not None:
            self.presence.receive(record, item)

    def _offer(self, record: RoomRecord, message: ChatMessage) -> bool:
        """Deliver ``message`` unless its id is at or below the room's last one (it
        was delivered already, live or from the stream). True when delivered."""
        key = message_id_key(message.id)
        last = record.last
        if last is not None and key <= last[0]:
            return False
        record.last = (key, message.id.encode())
        deliver = self.deliver
        if deliver is not None:
            try:
                deliver(message)
            except Exception:
                logger.exception(
                    "redis broker: delivering a message of room %s failed", record.name
                )
        return True

    def count_bad(self, exc: BadEntry) -> None:
        """A malformed entry was skipped: counted, and logged without flooding the log."""
        self.bad += 1
        # The first few, then one in a thousand: a flood of junk cannot flood the log.
        if self.bad <= 10 or self.bad % 1000 == 0:
            logger.warning("redis broker: skipped a malformed entry (%d so far): %s", self.bad, exc)

"""The Hub: the single owner of the rooms and their clients, and the broadcast.

In the Go original a hub goroutine owns the client map and three unbuffered channels
(register, unregister, broadcast) serialize every change to it. Here the hub and all
clients live on one event loop, which already serializes them: a method call runs to
completion before anything else touches the rooms, so the hub needs neither a task of
its own nor a queue in front of it. Nothing in this module awaits.

Broadcast, and the Go write pump's coalescing, done once per room instead of once per
client: every message delivered to a room during one loop iteration joins the room's
pending batch; one callback at the end of the iteration joins the batch with ``"\\n"``,
encodes it ONCE as a WebSocket frame and writes those same bytes to every member.
Under load a batch holds many lines, so the cost per line and per recipient falls as
the load rises, which is what the Go write pump's coalescing is for.

A client's send buffer is its connection's outgoing buffer. A client whose buffer
holds more than ``send_buffer x read_limit`` bytes (256 x 512 by default: as much as
256 full messages, the Go channel's capacity) when a batch is written is dead or
stuck: it is removed and closed at once, without waiting, so it never slows the hub
or the other clients. The Go write pump's write deadline has an equivalent too: a
client whose outgoing buffer has not once been empty for ``write_wait`` seconds when a
batch is written is just as stuck, however small its backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import epws

from .brokers import Broker, BrokerError, ChatMessage, MemoryBroker
from .metrics import Counters

if TYPE_CHECKING:
    from .client import Client

__all__ = ["DEFAULT_ROOM", "Hub", "Room", "error_line"]

logger = logging.getLogger("epws_chat.hub")

#: The room of clients that ask for none: the seed's single, unnamed chat.
DEFAULT_ROOM = "main"


class Room:
    """The members of one room on this process and the batch being gathered for them.

    Presence: ``counts`` is the named ``epws.chat.v1`` connections on THIS process
    by name, now (the broker holds those of the other processes:
    :meth:`~epws_chat.brokers.base.Broker.remote_members`); ``announced`` the merged
    counts the members were last told; ``changed`` the names that changed, here or
    elsewhere, this loop iteration (None: no presence flush scheduled).
    """

    __slots__ = ("announced", "changed", "counts", "members", "name", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[Client, None] = {}  # an ordered set
        self.pending: list[ChatMessage] | None = None
        self.counts: dict[str, int] = {}
        self.announced: dict[str, int] = {}
        self.changed: dict[str, None] | None = None


class Hub:
    """Registered clients by room, and a broadcast that never waits for any of them.

    Args:
        broker: where messages go and come from (default: this process only).
        send_limit: bytes a client may have waiting to be sent before it is evicted.
        write_wait: seconds a client's outgoing buffer may stay non-empty.
        stats: where the figures are counted (None: not counted, ``--metrics off``).
    """

    __slots__ = (
        "_loop",
        "_sweeper",
        "broker",
        "clients",
        "rooms",
        "send_limit",
        "stats",
        "write_wait",
    )

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        send_limit: int = 256 * 512,
        write_wait: float = 10.0,
        stats: Counters | None = None,
    ) -> None:
        self.stats = stats
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.send_limit = send_limit
        self.write_wait = write_wait
        self.rooms: dict[str, Room] = {}
        self.clients: dict[Client, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Connect the broker; messages start flowing to the rooms."""
        self._loop = asyncio.get_running_loop()
        await self.broker.start(self.deliver, self.gap, stats=self.stats, presence=self)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self.broker.close()

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client: object) -> bool:
        return client in self.clients

    # ------------------------------------------------------- membership

    def register(self, client: Client) -> None:
        """Add ``client`` to its room: from now on it gets the room's messages."""
        room = self.rooms.get(client.room)
        if room is None:
            room = self.rooms[client.room] = Room(client.room)
            self.broker.subscribe(client.room)
        room.members[client] = None
        self.clients[client] = None
        if client.watches:
            client.send_presence(dict(room.announced))
        self._count(room, client.name, 1)

    def rename(self, client: Client, name: str) -> None:
        """``client`` (registered) takes another name: its presence moves with it."""
        room = self.rooms.get(client.room)
        if room is not None and client in room.members:
            self._count(room, client.name, -1)
            client.name = name
            self._count(room, name, 1)
        else:
            client.name = name

    def _count(self, room: Room, name: str, delta: int) -> None:
        """One named connection more or less in ``room``: announced at the end of the
        loop iteration, with every other change of that iteration (one frame)."""
        if not name:
            return
        count = room.counts.get(name, 0) + delta
        if count > 0:
            room.counts[name] = count
        else:
            room.counts.pop(name, None)
        self.broker.presence_changed(room.name, name)
        self._touch(room, name)

    def remote_changed(self, room: str, names: Iterable[str]) -> None:
        """The broker heard that ``names`` changed in ``room`` on other processes:
        announced with this iteration's own changes."""
        members = self.rooms.get(room)
        if members is not None:
            for name in names:
                self._touch(members, name)

    def _touch(self, room: Room, name: str) -> None:
        if room.changed is None:
            room.changed = {}
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush_presence, room)
        room.changed[name] = None

    def _flush_presence(self, room: Room) -> None:
        """Tell the room's JSON members who joined and left since the last flush."""
        changed = room.changed or {}
        room.changed = None
        lines = []
        elsewhere = self.broker.remote_members(room.name)
        for name in changed:
            now = room.counts.get(name, 0) + elsewhere.get(name, 0)
            before = room.announced.get(name, 0)
            if now == before:
                continue  # came and went within the iteration: nothing to say
            if now:
                room.announced[name] = now
            else:
                room.announced.pop(name, None)
            kind = "join" if now > before else "leave"
            lines.append(
                json.dumps(
                    {"type": kind, "room": room.name, "name": name, "connections": now},
                    ensure_ascii=False,
                )
            )
        if not lines or self.rooms.get(room.name) is not room:
            return
        message = _prepare(lines, room.name)
        for client in room.members:
            if client.watches:
                with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
                    client.conn.write_prepared_nowait(message)

    def unregister(self, client: Client) -> None:
        """Remove ``client``; a client the hub already evicted is left alone (no-op)."""
        if client not in self.clients:
            return
        del self.clients[client]
        self._leave(client)

    def _leave(self, client: Client) -> None:
        room = self.rooms.get(client.room)
        if room is None:
            return
        if room.members.pop(client, False) is None:
            self._count(room, client.name, -1)
        if not room.members:
            del self.rooms[client.room]
            self.broker.unsubscribe(client.room)

    def evict(self, client: Client, reason: str = "send_buffer") -> None:
        """Remove a dead or stuck client and close it, without waiting for it."""
        if client not in self.clients:
            return
        if self.stats is not None:
            self.stats.evicted(reason)
        del self.clients[client]
        self._leave(client)
        client.evicted()

    # ------------------------------------------------------- messages

    def broadcast(
        self,
        text: str,
        *,
        room: str = DEFAULT_ROOM,
        name: str = "",
        sender: Client | None = None,
        on_error: Callable[[BrokerError], None] | None = None,
    ) -> None:
        """Send ``text`` to every member of ``room`` on every process, sender included.

        A failure goes to ``on_error``, else to the sender, else to the log.
        """
        if on_error is None:
            on_error = sender.publish_failed if sender is not None else _log_publish_error
        self.broker.publish(room, name, text, on_error)

    def local_members(self, room: str) -> dict[str, int]:
        """Names in ``room`` on this process, with their connection counts (clients
        without a name are not members anyone can see)."""
        members = self.rooms.get(room)
        return dict(members.counts) if members is not None else {}

    async def members(self, room: str) -> dict[str, int]:
        """Names in ``room`` on every process sharing the broker, with their
        connection counts (this process's own, and the others' read from the
        broker). Raises :class:`~epws_chat.brokers.base.BrokerError`."""
        total = self.local_members(room)
        for name, count in (await self.broker.read_presence(room)).items():
            total[name] = total.get(name, 0) + count
        return total

    def deliver(self, message: ChatMessage) -> None:
        """A message for ``message.room`` (from this process or another): batch it."""
        room = self.rooms.get(message.room)
        if room is None:
            return
        pending = room.pending
        if pending is None:
            room.pending = [message]
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush, room)
        else:
            pending.append(message)

    def gap(self, room_name: str) -> None:
        """The broker may have lost messages of ``room_name``: tell its members.

        After an outage a broker fills each room's gap from its history; when the
        history cannot prove the gap whole, the members are told rather than left
        to believe they saw everything.
        """
        room = self.rooms.get(room_name)
        if room is None:
            return
        text = "some messages may be missing: the broker lost messages while it was away"
        as_json = epws.PreparedMessage(epws.MessageType.TEXT, error_line(text, missed=True))
        plain = epws.PreparedMessage(epws.MessageType.TEXT, f"error: {text}")
        for client in room.members:
            with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
                client.conn.write_prepared_nowait(as_json if client.speaks_json else plain)

    def _flush(self, room: Room) -> None:
        """Write the room's batch: encoded once per protocol, the same bytes to all."""
        batch = room.pending
        room.pending = None
        if not batch:
            return
        plain: epws.PreparedMessage | None = None
        as_json: epws.PreparedMessage | None = None
        limit = self.send_limit
        stuck: list[Client] | None = None
        now = (self._loop or asyncio.get_running_loop()).time()
        oldest = now - self.write_wait
        sent_plain = sent_json = 0
        for client in room.members:
            if client.held_for_history is not None:
                client.held_for_history.extend(batch)  # history still loading: keep the order
                continue
            conn = client.conn
            buffered = conn.buffered_amount
            if buffered:
                if _stuck(client, buffered, now, oldest, limit):
                    if stuck is None:
                        stuck = []
                    stuck.append(client)
                    continue
            elif client.backlog_since is not None:
                client.backlog_since = None
            if client.speaks_json:
                if as_json is None:
                    as_json = _prepare([m.json() for m in batch], room.name)
                message = as_json
                sent_json += 1
            else:
                if plain is None:
                    plain = _prepare([m.text for m in batch], room.name)
                message = plain
                sent_plain += 1
            if message is _NOTHING:
                continue
            try:  # noqa: SIM105 - the hot loop: cheaper than contextlib.suppress
                conn.write_prepared_nowait(message)
            except (epws.ConnectionClosed, epws.InvalidState):
                pass  # closing: its on_close unregisters it
        stats = self.stats
        if stats is not None:  # once per batch, never per recipient
            sent = sent_plain + sent_json
            stats.frames_out += sent
            stats.messages_out += sent * len(batch)
            if plain is not None:
                stats.bytes_out += sent_plain * len(plain.data)
            if as_json is not None:
                stats.bytes_out += sent_json * len(as_json.data)
        if stuck is not None:
            for client in stuck:
                logger.info("evicted %s: send buffer full", client)
                self.evict(client)

    def sweep(self) -> int:
        """Evict clients whose outgoing data has waited longer than ``write_wait``.

        Batches check this as they are written; a room that falls silent writes no
        batch, so :meth:`sweep_every` calls this every few seconds too. Returns how
        many clients were evicted.
        """
        now = (self._loop or asyncio.get_running_loop()).time()
        oldest = now - self.write_wait
        stuck: list[Client] = []
        for client in self.clients:
            buffered = client.conn.buffered_amount
            if buffered:
                if _stuck(client, buffered, now, oldest, math.inf):
                    stuck.append(client)
            else:
                client.backlog_since = None
        for client in stuck:
            logger.info("evicted %s: nothing sent for %.3g s", client, self.write_wait)
            self.evict(client, "write_wait")
        return len(stuck)

    def sweep_every(self, period: float) -> None:
        """Call :meth:`sweep` every ``period`` seconds from one loop timer, until :meth:`close`.

        A timer, not a task: nothing here awaits. It is re-armed before each sweep, so
        a sweep that fails (a bug) is logged and the next one still runs.
        """
        loop = self._loop or asyncio.get_running_loop()

        def due() -> None:
            self._sweeper = loop.call_later(period, due)
            try:
                self.sweep()
            except Exception:
                logger.exception("write-wait sweep failed; the next one runs in %.3g s", period)

        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = loop.call_later(period, due)


def _stuck(client: Client, buffered: int, now: float, oldest: float, limit: float) -> bool:
    """The backlog rule, for a client with ``buffered`` bytes (not 0) waiting to be sent:
    stuck when they exceed ``limit`` or the buffer has not once been empty since before
    ``oldest`` (Go's write deadline). Starts the client's backlog clock at ``now`` if it
    is not running; whoever sees the buffer empty stops it (``backlog_since = None``).

    Called only for a client with a backlog, so the fan-out loop pays no call for the
    usual member, whose buffer is empty.
    """
    since = client.backlog_since
    if since is None:
        client.backlog_since = since = now
    return buffered > limit or since < oldest


def error_line(text: str, *, missed: bool = False) -> str:
    """An ``epws.chat.v1`` error line; ``missed``: messages may be lost (the page then
    tells the user that the conversation has a hole)."""
    if missed:
        return json.dumps({"type": "error", "text": text, "missed": True})
    return json.dumps({"type": "error", "text": text})


def _prepare(lines: list[str], room: str) -> epws.PreparedMessage:
    """The batch as one frame; a line that cannot be encoded costs only itself.

    Brokers and the read pump clean every text (:func:`~epws_chat.brokers.clean_text`),
    so this is the last line of defence: one bad line must never lose the innocent
    lines of its batch, for any member.
    """
    try:
        return epws.PreparedMessage(epws.MessageType.TEXT, "\n".join(lines))
    except (UnicodeError, ValueError):
        good = []
        for line in lines:
            try:
                line.encode("utf-8")
            except UnicodeError:
                logger.error("room %s: dropped a line that is not valid text", room)
                continue
            good.append(line)
        if not good:
            return _NOTHING
        return epws.PreparedMessage(epws.MessageType.TEXT, "\n".join(good))


#: What :func:`_prepare` returns when no line of a batch could be encoded.
_NOTHING = epws.PreparedMessage(epws.MessageType.TEXT, "")


def _log_publish_error(error: BrokerError) -> None:
    logger.warning("message not delivered: %s", error)

"""Presence across processes through Redis: who is in a room on every process and
machine, right after a crash too.

Each process keeps its own members (the hub's counts, by name) and writes them to
Redis; it keeps what the OTHER processes have in each room it has members in, in the
room's record (:class:`~epws_chat.brokers.subscriptions.RoomRecord`), so the hub can
announce merged counts without asking Redis.

* **Writes, batched.** A change of the hub's counts only marks the name (no I/O);
  one task writes every marked room at once: per room, one Lua script stores this
  process's members in the room's hash and PUBLISHes the changed names, with a
  sequence number, on the room's channel. The next write waits until the previous
  one is answered and :data:`LINGER` has passed, the changes gathering meanwhile,
  so a thousand joins cost a handful of writes and, on every other process, a
  handful of presence frames.
* **Liveness.** Every ``interval`` seconds each process renews its heartbeat: its
  score in ``<prefix>procs`` is Redis's clock plus ``2 x interval``, and the same
  script returns every live process. A process whose heartbeat lapsed is dropped
  from every room by every other process at its next renewal, so the members of a
  process killed without a goodbye stop counting within ``3 x interval`` (15 s by
  default) of its last heartbeat. A process that finds its own heartbeat had lapsed
  (a long pause, Redis restarted without its data) writes all its rooms again.
* **Reads.** A room that becomes live reads the room's hash (live processes only;
  the script deletes the fields of dead ones) within the one subscribe sequence;
  changes received meanwhile are held and applied after it, by sequence number, so
  none is lost or applied twice. ``GET /api/rooms/{room}/presence`` reads the hash
  the same way, for any room.
* **Goodbye.** A process that closes writes its members away and removes its
  heartbeat, so a clean shutdown is seen at once.

The hash keys expire ``3 x interval`` after their last renewal, so presence of rooms
nobody is in any more does not stay in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from .base import BadEntry, PresenceHost
from .listener import Listener, describe
from .tasks import stop
from .wire import (
    Keys,
    PresenceDelta,
    decode_presence_state,
    encode_presence,
    encode_presence_state,
)

if TYPE_CHECKING:
    from .subscriptions import RoomRecord, Subscriptions

__all__ = [
    "LINGER",
    "PRESENCE_HEARTBEAT",
    "PRESENCE_READ",
    "PRESENCE_WRITE",
    "Presence",
    "RemoteEntry",
]

logger = logging.getLogger("epws_chat.redis")

#: Seconds between two presence writes of a process: the changes of that time go
#: together, so a storm of joins and leaves (a process restarting, its clients coming
#: back) costs each other process at most 1/LINGER presence frames a second per room.
LINGER = 0.05

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

#: KEYS: the room's hash, the process set; ARGV: pid, state ("" when the process has
#: no member left there), channel, payload, hash TTL (ms), heartbeat TTL (ms).
PRESENCE_WRITE = (
    _NOW
    + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[4])
"""
)

#: KEYS: the process set; ARGV: pid, heartbeat TTL (ms). Returns 1 if this process
#: had lapsed (or is new), else 0, followed by every live process id.
PRESENCE_HEARTBEAT = (
    _NOW
    + """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local back = 0
if (not old) or tonumber(old) < now then back = 1 end
local out = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(out, 1, back)
return out
"""
)

#: KEYS: the room's hash, the process set. Returns [pid, state, ...] of the live
#: processes; the fields of the others are deleted.
PRESENCE_READ = (
    _NOW
    + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local score = redis.call('ZSCORE', KEYS[2], all[i])
  if score and tonumber(score) >= now then
    table.insert(out, all[i]) table.insert(out, all[i + 1])
  else redis.call('HDEL', KEYS[1], all[i]) end
end
return out
"""
)


class RemoteEntry:
    """What one other process has in a room: its last sequence number applied, its
    members there, and when (loop time) it was last heard of."""

    __slots__ = ("counts", "seen", "seq")

    def __init__(self, seq: int, seen: float) -> None:
        self.seq = seq
        self.counts: dict[str, int] = {}
        self.seen = seen


class Presence:
    """This process's presence in Redis, and the other processes' in its rooms.

    Args:
        redis: the command connection pool.
        keys: key and channel names.
        subscriptions: the room records (where the other processes' members live).
        listener: whether Redis is reachable.
        interval: seconds between heartbeats (see the module's docstring for the bound).

    Attributes:
        pid: this process's id in Redis (new at every start).
        host: the hub (this process's members; told when other processes' change).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriptions: Subscriptions,
        listener: Listener,
        *,
        interval: float,
    ) -> None:
        if interval <= 0:
            raise ValueError("the presence interval must be positive")
        self.redis = redis
        self.keys = keys
        self.subscriptions = subscriptions
        self.listener = listener
        self.interval = interval
        self.pid = uuid.uuid4().hex[:16]
        self.host: PresenceHost | None = None
        self._beat_ms = str(int(2000 * interval))
        self._expire_ms = str(int(3000 * interval))
        self._seq = 0
        # Names whose count changed here, by room, not written yet; and the rooms
        # where this process has members in Redis (renewed with each heartbeat).
        self._pending: dict[str, set[str]] = {}
        self._written: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0

    # ------------------------------------------------------------- this process

    def changed(self, room: str, name: str) -> None:
        """The count of ``name`` in ``room`` changed here: written with the next batch."""
        names = self._pending.get(room)
        if names is None:
            names = self._pending[room] = set()
            self._wake.set()
        names.add(name)

    def start(self) -> None:
        """Start the task that writes changes and renews the heartbeat."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Write what is pending, then say goodbye (briefly: at most a second)."""
        self._closing = True
        task, self._task = self._task, None
        await stop(task)
        if not self.listener.up:
            return
        try:
            async with asyncio.timeout(1):
                for room in self._written:
                    self._pending.setdefault(room, set())
                await self._flush(goodbye=True)
                await self.redis.zrem(self.keys.procs, self.pid)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("redis broker: presence goodbye failed (%s)", describe(exc))

    async def _run(self) -> None:
        """Write changes (one batch at a time, at most one per :data:`LINGER`),
        heartbeat every interval."""
        loop = asyncio.get_running_loop()
        next_beat = last_write = loop.time() - LINGER
        while not self._closing:
            try:
                if not self.listener.up:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self.listener.wait_up()
                    next_beat = min(next_beat, loop.time())
                    continue
                if self._pending and loop.time() >= last_write + LINGER:
                    last_write = loop.time()
                    await self._flush()
                now = loop.time()
                if now >= next_beat:
                    await self._heartbeat()
                    next_beat = max(next_beat + self.interval, now)
                if self._pending:
                    delay = min(next_beat, last_write + LINGER) - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                            await self._wake.wait()
                self._failures = 0
            except (RedisError, OSError, TimeoutError) as exc:
                self._failures += 1
                if self._failures <= 3 or self._failures % 100 == 0:
                    logger.warning("redis broker: presence update failed (%s)", describe(exc))
                await asyncio.sleep(min(1.0, self.interval))
            except Exception:
                logger.exception("redis broker: presence task error; going on")
                await asyncio.sleep(min(1.0, self.interval))

    async def _flush(self, *, goodbye: bool = False) -> None:
        """Write every room with pending changes, in one pipeline."""
        host = self.host
        pending, self._pending = self._pending, {}
        if host is None or not pending:
            return
        keys, pid = self.keys, self.pid
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room, names in pending.items():
                    counts = {} if goodbye else host.local_members(room)
                    if goodbye:
                        names = set(names) | set(host.local_members(room))
                    self._seq += 1
                    delta = {name: counts.get(name, 0) for name in names}
                    state = encode_presence_state(self._seq, counts) if counts else b""
                    pipe.eval(
                        PRESENCE_WRITE,
                        2,
                        keys.presence(room),
                        keys.procs,
                        pid,
                        state,
                        keys.channel(room),
                        encode_presence(pid, self._seq, delta),
                        self._expire_ms,
                        self._beat_ms,
                    )
                    if counts:
                        self._written.add(room)
                    else:
                        self._written.discard(room)
                results: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException:
            for room, names in pending.items():  # tried again with the next batch
                self._pending.setdefault(room, set()).update(names)
            raise
        for room, result in zip(pending, results, strict=True):
            if isinstance(result, Exception):
                logger.warning("redis broker: room %s: presence not written (%s)", room, result)

    async def _heartbeat(self) -> None:
        """Renew this process, keep its rooms' hashes, drop the processes that lapsed."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        rooms = list(self._written)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(PRESENCE_HEARTBEAT, 1, self.keys.procs, self.pid, self._beat_ms)
            for room in rooms:
                pipe.pexpire(self.keys.presence(room), int(self._expire_ms))
            results: list[Any] = await pipe.execute()
        reply = results[0]
        back, live = reply[0], {_text(pid) for pid in reply[1:]}
        if back and self.host is not None:
            # Counted dead meanwhile (or Redis forgot us): every room again, whole.
            for room in self._written:
                self._pending.setdefault(room, set()).update(self.host.local_members(room))
            self._wake.set()
        for record in list(self.subscriptions.rooms.values()):
            gone = [
                pid
                for pid, entry in record.remote.items()
                if pid not in live and entry.seen < asked
            ]
            if gone:
                names: set[str] = set()
                for pid in gone:
                    names.update(self._drop(record, pid))
                self._tell(record, names)

    # ------------------------------------------------------------- other processes

    def queue_read(self, pipe: Pipeline, record: RoomRecord) -> None:
        """Add the read of ``record``'s room presence to a subscribe sequence's pipeline."""
        pipe.eval(PRESENCE_READ, 2, self.keys.presence(record.name), self.keys.procs)

    def snapshot(self, record: RoomRecord, reply: Any) -> None:
        """Replace what ``record`` knows of other processes by a read's ``reply``."""
        states = self._decode(record.name, reply)
        now = asyncio.get_running_loop().time()
        names: set[str] = set()
        for pid in [pid for pid in record.remote if pid not in states]:
            names.update(self._drop(record, pid))
        for pid, (seq, counts) in states.items():
            entry = record.remote.get(pid)
            if entry is not None and entry.seq >= seq:
                entry.seen = now
                continue
            if entry is None:
                entry = record.remote[pid] = RemoteEntry(seq, now)
            entry.seq, entry.seen = seq, now
            for name in [name for name in entry.counts if name not in counts]:
                if _set(record, entry, name, 0):
                    names.add(name)
            for name, count in counts.items():
                if _set(record, entry, name, count):
                    names.add(name)
        self._tell(record, names)

    def receive(self, record: RoomRecord, delta: PresenceDelta) -> None:
        """A change published by another process (ours are known already)."""
        if delta.pid == self.pid:
            return
        now = asyncio.get_running_loop().time()
        entry = record.remote.get(delta.pid)
        if entry is None:
            entry = record.remote[delta.pid] = RemoteEntry(delta.seq, now)
        elif delta.seq <= entry.seq:
            entry.seen = now
            return  # already in the snapshot this record read
        entry.seq, entry.seen = delta.seq, now
        names = [name for name, count in delta.members.items() if _set(record, entry, name, count)]
        if not entry.counts:
            del record.remote[delta.pid]
        self._tell(record, names)

    async def read(self, room: str) -> dict[str, int]:
        """Members of ``room`` on every other live process, from Redis."""
        reply = await self.redis.eval(PRESENCE_READ, 2, self.keys.presence(room), self.keys.procs)
        total: dict[str, int] = {}
        for seq_counts in self._decode(room, reply).values():
            for name, count in seq_counts[1].items():
                total[name] = total.get(name, 0) + count
        return total

    def _decode(self, room: str, reply: Any) -> dict[str, tuple[int, dict[str, int]]]:
        states: dict[str, tuple[int, dict[str, int]]] = {}
        if not isinstance(reply, list):
            return states
        for i in range(0, len(reply) - 1, 2):
            pid = _text(reply[i])
            if pid == self.pid:
                continue
            try:
                states[pid] = decode_presence_state(room, reply[i + 1])
            except BadEntry as exc:
                self.subscriptions.count_bad(exc)
        return states

    def _drop(self, record: RoomRecord, pid: str) -> list[str]:
        entry = record.remote.pop(pid, None)
        if entry is None:
            return []
        names = list(entry.counts)
        for name in names:
            _set(record, entry, name, 0)
        return names

    def _tell(self, record: RoomRecord, names: Any) -> None:
        host = self.host
        if names and host is not None and self.subscriptions.rooms.get(record.name) is record:
            host.remote_changed(record.name, names)


def _set(record: RoomRecord, entry: RemoteEntry, name: str, count: int) -> bool:
    """Set ``name``'s count on one other process, keeping the room's total; True if
    it changed."""
    old = entry.counts.get(name, 0)
    if old == count:
        return False
    if count:
        entry.counts[name] = count
    else:
        del entry.counts[name]
    total = record.remote_total.get(name, 0) + count - old
    if total > 0:
        record.remote_total[name] = total
    else:
        record.remote_total.pop(name, None)
    return True


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

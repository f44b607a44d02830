"""RedisBroker: many chat processes (on one machine or many) share rooms through Redis.

The design is Centrifugo's Redis engine in miniature (see docs/deployment.md):

* **One Lua script per message** appends it to a capped stream per room
  (``epws:chat:<room>:log``, ``MAXLEN history``) and PUBLISHes it, with the id XADD
  assigned, on the room's channel (``epws:chat:<room>``). The script runs atomically
  in Redis's single thread, so the id order IS the delivery order for every process:
  all members of a room see the same order, and history and live lines agree.
* **Publishing never waits.** :meth:`RedisBroker.publish` queues the message; one task
  sends everything queued during a loop iteration as ONE pipeline, and while that
  pipeline is in flight the next batch gathers (so batches grow with the load, and a
  process's messages reach Redis in the order it received them). A failed batch
  reports a :class:`~epws_chat.broker.BrokerError` for each of its messages, which
  the client turns into an error line for its sender.
* **Interest-based subscriptions.** One pub/sub connection per process, SUBSCRIBEd
  only to the rooms with local members; a listener task reads it and hands every
  message to the hub in order.
* **Robustness.** When Redis goes away the local clients keep being served: the
  listener logs one line, reconnects with exponential backoff and jitter, resubscribes
  to the current rooms and fills the gap of each room from its stream (XRANGE after the
  last id delivered) before live delivery resumes, so no room loses a message that
  reached Redis. While Redis is unreachable, publishes fail at once with a clear
  error instead of vanishing.

Only this module knows it is Redis: the hub sees the :class:`~epws_chat.broker.Broker`
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, TimeoutError as RedisTimeoutError

from .broker import (
    BadEntry,
    BrokerError,
    BrokerUnsure,
    ChatMessage,
    Deliver,
    OnError,
    Page,
    clean_text,
    message_id_key,
)

__all__ = ["PUBLISH_SCRIPT", "RedisBroker", "decode_entry", "is_complete"]

logger = logging.getLogger("epws_chat.redis")

#: KEYS[1]: the room's stream; ARGV: channel, body, MAXLEN, trim operator ("=" or "~"),
#: retention in seconds (0: none). Returns the stream id, which is also the message id
#: every process sees. The EXPIRE is refreshed by every message, so a room's history
#: lives ``retention`` seconds after its last message (and Redis frees abandoned rooms).
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], ARGV[3], '*', 'd', ARGV[2])
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id
"""

#: Largest number of messages sent in one pipeline (a longer queue takes several).
MAX_BATCH = 1000
#: Largest number of missed messages fetched per room after a reconnect.
MAX_FILL = 10_000

_IdKey = tuple[int, int]
_Pending = tuple[str, bytes, OnError]

_id_key = message_id_key  # one id parser for both brokers (ValueError if malformed)


def decode_entry(room: str, raw: bytes, body: bytes) -> ChatMessage:
    """One message in the wire format (pub/sub payload or stream entry), checked.

    The format: the id (``"<ms>-<seq>"``), and a body ``[name, text, time]`` in JSON.
    Anything else (from another program, an older version, a hand-made XADD) raises
    :class:`~epws_chat.broker.BadEntry`; the caller skips it and goes on: one bad
    entry must never stop the listener or a history read.
    """
    try:
        message_id_key(raw)
        name, text, sent = json.loads(body)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: {exc}") from None
    if not isinstance(name, str) or not isinstance(text, str):
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: name and text must be strings")
    if isinstance(sent, bool) or not isinstance(sent, (int, float)):
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: time must be a number")
    return ChatMessage(raw.decode("ascii"), room, clean_text(name)[:64], clean_text(text), sent)


def is_complete(after: _IdKey, entries: list[Any], info: Any) -> bool:
    """Whether a stream read from ``after`` INCLUSIVE holds every message after it.

    ``entries`` is ``XRANGE key after + COUNT limit+2`` (the caller already knows the
    count), ``info`` is ``XINFO STREAM key`` (an error if the key is missing).

    * ``after``'s own entry is still there: nothing after it was trimmed.
    * Else, if the stream was never trimmed (``entries-added`` equals ``length``), it
      holds its whole life; ``after`` must fall within it. An ``after`` older than
      its first entry predates this stream: it was lost (Redis restarted without
      persistence, the key expired or was evicted) and recreated since.
    * Anything else (trimmed past ``after``, no stream, ``after`` beyond the newest
      entry) may miss messages.
    """
    if entries and _id_key(entries[0][0]) == after:
        return True
    length = added = None
    if isinstance(info, dict):
        length, added = info.get("length"), info.get("entries-added")
    if after == (0, 0):
        # The room was empty when this process joined it: whole unless trimmed since
        # (an empty or missing stream means nothing was said).
        return length == added
    if not isinstance(info, dict):
        return False  # no stream at all: its history is gone (or never was)
    first, last = info.get("first-entry"), info.get("last-entry")
    if length is None or added is None or length != added or not first or not last:
        return False
    return _id_key(first[0]) <= after <= _id_key(last[0])


def _redact(url: str) -> str:
    """The URL for logs, without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _RoomState:
    """Everything the broker knows about one room with local members: one record
    instead of parallel dicts, so joining, leaving and re-joining cannot leave them
    out of step (a re-joined room is a NEW record, never ready by accident)."""

    __slots__ = ("channel", "last", "log_key", "name", "ready")

    def __init__(self, name: str, channel: bytes, log_key: bytes) -> None:
        self.name = name
        self.channel = channel
        self.log_key = log_key
        #: Set once the subscription is live and ``last`` is known.
        self.ready = asyncio.Event()
        #: The newest id delivered (key, raw), from which a reconnection fills the gap.
        self.last: tuple[_IdKey, bytes] | None = None

    def advance(self, raw: bytes) -> None:
        key = _id_key(raw)
        if self.last is None or key > self.last[0]:
            self.last = (key, raw)


class RedisBroker:
    """The chat's broker for several processes: Redis pub/sub + a capped stream per room.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket``.
        history: messages kept per room (the stream's MAXLEN; exact below 100,
            approximate above, where Redis trims whole stream nodes); it also bounds
            how far back a reconnecting process can fill a gap.
        prefix: prefix of the Redis keys and channels.
        timeout: seconds a Redis command or connection attempt may take.
        backoff: smallest and largest delay between reconnection attempts.
        health_interval: seconds of silence on the pub/sub connection after which a
            PING is sent; no answer within as long again counts as a lost connection
            (a half-open TCP connection is not noticed otherwise).
        retention: seconds a room's stream lives after its last message (an EXPIRE
            refreshed by each message; 0: forever). Abandoned rooms are freed.

    Attributes:
        recovered: messages delivered from the streams after reconnections (each one
            would have been lost with pub/sub alone).
        bad: malformed entries met (pub/sub payloads and stream entries), skipped.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        history: int = 100,
        prefix: str = "epws:chat:",
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        health_interval: float = 15.0,
        retention: float = 86400.0,
    ) -> None:
        if history < 0:
            raise ValueError("history must not be negative")
        self.url = url
        self.recovered = 0
        self.bad = 0
        self._retention = str(max(0, int(retention))).encode()
        self._gap: Callable[[str], None] | None = None
        self._shown_url = _redact(url)
        self._history = history
        self._prefix = prefix
        self._timeout = timeout
        self._backoff = backoff
        self._health_interval = health_interval
        no_retry = Retry(NoBackoff(), 0)  # failures are reported, never silently repeated
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        # The pub/sub connection waits for messages indefinitely (socket_timeout None);
        # the listener's PING watchdog replaces the timeout. RESP2 keeps pub/sub
        # messages plain arrays.
        self._sub_pool: ConnectionPool = ConnectionPool.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=no_retry,
            protocol=2,
        )
        self._maxlen = str(history).encode()
        self._trim = b"=" if history < 100 else b"~"
        self._sha: str | None = None
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Subscriptions: wanted (local members), sent on the current connection, and
        # per room an event set once it is live (see _sync_subscriptions).
        # One record per room with local members (see _RoomState), and an index of
        # them by channel for the listener; _sent: the rooms subscribed on the current
        # connection (a room left may still be there until its UNSUBSCRIBE is sent).
        self._rooms: dict[str, _RoomState] = {}
        self._channels: dict[bytes, _RoomState] = {}
        self._sent: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._up = False
        self._up_event: asyncio.Event | None = None
        self._first_attempt: asyncio.Event | None = None
        self._down_reason = "not connected to Redis yet"
        self._listener: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._batch: list[_Pending] = []
        self._publisher: asyncio.Task[None] | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_count = 0

    def __repr__(self) -> str:
        return f"<RedisBroker {self._shown_url} {'up' if self._up else 'down'}>"

    # ------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        """True while Redis is reachable and the subscriptions are in place."""
        return self._up

    async def wait_connected(self) -> None:
        """Wait until :attr:`connected` (for health checks and tests)."""
        if self._up_event is None:
            raise RuntimeError("the broker is not started")
        await self._up_event.wait()

    def _channel(self, room: str) -> bytes:
        return f"{self._prefix}{room}".encode()

    def _log_key(self, room: str) -> bytes:
        return f"{self._prefix}{room}:log".encode()

    # ------------------------------------------------------------- lifecycle

    async def start(self, deliver: Deliver, gap: Callable[[str], None] | None = None) -> None:
        """Start the listener; wait (at most ``timeout``) for the first connection.

        Redis being down at start is not fatal: the chat serves its local clients
        and the listener keeps trying, as after any loss of the connection.
        ``gap(room)`` is called when, after a reconnection, a room's stream cannot
        prove that every message missed meanwhile was recovered.
        """
        self._deliver = deliver
        self._gap = gap
        self._loop = asyncio.get_running_loop()
        self._up_event = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._listener = self._loop.create_task(self._supervise_listener())
        try:
            async with asyncio.timeout(self._timeout + 1):
                await self._first_attempt.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Send what is queued (briefly), stop the tasks, close the connections."""
        if self._closed:
            return
        self._closed = True
        publisher = self._publisher
        if publisher is not None:
            try:
                async with asyncio.timeout(2):
                    await asyncio.shield(publisher)
            except TimeoutError:
                publisher.cancel()
        failed, self._batch = self._batch, []
        for _, _, on_error in failed:
            on_error(BrokerError("the chat is shutting down"))
        for task in (self._listener, self._syncer, self._publisher):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._listener, self._syncer, self._publisher):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._deliver = None
        self._set_down("the chat is shutting down")
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)
        await self._sub_pool.disconnect()
        await self._redis.aclose()

    # ------------------------------------------------------------- subscriptions

    def subscribe(self, room: str) -> None:
        if room in self._rooms:
            return
        # A new record, not ready until the syncer (or the listener's resubscription)
        # has made the room live, even if the connection never unsubscribed it: a
        # room left and re-joined while a change is in flight dropped its messages.
        state = _RoomState(room, self._channel(room), self._log_key(room))
        self._rooms[room] = state
        self._channels[state.channel] = state
        self._kick_syncer()

    def unsubscribe(self, room: str) -> None:
        state = self._rooms.pop(room, None)
        if state is None:
            return
        self._channels.pop(state.channel, None)
        state.ready.set()  # nobody waits for a room without members
        self._kick_syncer()  # its last id goes with the record: no gap to fill

    def _kick_syncer(self) -> None:
        if self._up and self._syncer is None and self._loop is not None:
            self._syncer = self._loop.create_task(self._sync_subscriptions())

    async def _sync_subscriptions(self) -> None:
        """Make the connection's subscriptions match the rooms with local members.

        A room is new when it has members and is not ready (whether or not the
        connection still has it subscribed: SUBSCRIBE is idempotent). For new rooms:
        SUBSCRIBE, a barrier (the subscriptions are active), the newest id of each
        room's stream, a second barrier (every live message up to that id has been
        delivered), then that id becomes the room's last id and the room is ready.
        Older messages are history (a joining client reads them after the room is
        ready); newer ones arrive live or, after a reconnection, from the stream. No
        message is delivered twice and none falls between the two.

        A failure here (a timeout, Redis refusing) drops the pub/sub connection: the
        listener reconnects and resubscribes every room, filling gaps from the
        streams, which is the one recovery path; swallowing the error would leave
        rooms that never become ready and stall every publish that names them.
        """
        conn = self._conn
        try:
            while self._up and not self._closed:
                conn = self._conn
                if conn is None or not conn.is_connected:
                    return  # the listener is reconnecting and will resubscribe
                new = [st for st in self._rooms.values() if not st.ready.is_set()]
                gone = [r for r in self._sent if r not in self._rooms]
                if not new and not gone:
                    return
                if gone:
                    self._sent.difference_update(gone)
                    await conn.send_command("UNSUBSCRIBE", *[self._channel(r) for r in gone])
                if new:
                    self._sent.update(st.name for st in new)
                    await conn.send_command("SUBSCRIBE", *[st.channel for st in new])
                    await self._barrier()
                    tops = await self._tops([st.name for st in new])
                    await self._barrier()
                    for state, top in zip(new, tops, strict=True):
                        # Still the same membership (not left, maybe re-joined since:
                        # then a new record, made ready by the next round).
                        if self._rooms.get(state.name) is state and state.name in self._sent:
                            state.advance(top)
                            state.ready.set()
        except (RedisError, OSError, BrokerError, TimeoutError, ValueError) as exc:
            if not self._closed and self._up:
                logger.warning(
                    "redis broker: subscription update failed (%s); reconnecting to "
                    "resubscribe every room",
                    _describe(exc),
                )
                self._set_down(f"Redis at {self._shown_url} failed ({_describe(exc)})")
                if conn is not None:
                    await conn.disconnect(nowait=True)
        finally:
            self._syncer = None

    async def _tops(self, rooms: list[str]) -> list[bytes]:
        """The newest id of each room's stream ("0-0" for an empty one)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.xrevrange(self._log_key(room), count=1)
            results: list[Any] = await pipe.execute()
        return [_top(entries) for entries in results]

    # ------------------------------------------------------------- the listener

    async def _supervise_listener(self) -> None:
        """Run the listener; restart it (logged, after a pause) if a bug ends it.

        The listener handles every Redis failure itself; anything else escaping it
        is a bug, and a dead listener would leave the process deaf forever while
        publishes still succeed. So: log it with its traceback, mark the broker down
        (senders get an error rather than silence), and start again.
        """
        while not self._closed:
            try:
                await self._listen_forever()
                return
            except Exception as exc:
                logger.exception("redis broker: the listener failed; restarting it")
                self._set_down(f"the Redis listener failed ({_describe(exc)})")
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                if self._first_attempt is not None:
                    self._first_attempt.set()
                await asyncio.sleep(self._backoff[0])

    async def _listen_forever(self) -> None:
        """Connect, listen, and after any failure reconnect with backoff and jitter."""
        attempt = 0
        down_since: float | None = None
        first = True
        assert self._first_attempt is not None
        while not self._closed:
            try:
                conn, resubscribed = await self._connect()
            except (RedisError, OSError, TimeoutError) as exc:
                reason = _describe(exc)
                if first or self._up or down_since is None:
                    logger.warning(
                        "redis broker: cannot reach %s (%s); serving local clients only, "
                        "retrying with backoff",
                        self._shown_url,
                        reason,
                    )
                    down_since = down_since or time.monotonic()
                self._set_down(f"Redis at {self._shown_url} is unreachable ({reason})")
                first = False
                self._first_attempt.set()
                low, high = self._backoff
                delay = min(high, low * 2**attempt) * random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 30)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if down_since is None or first:
                logger.info("redis broker: connected to %s", self._shown_url)
            else:
                logger.info(
                    "redis broker: reconnected to %s after %.1f s; resubscribed %d room(s), "
                    "recovered %d missed message(s)",
                    self._shown_url,
                    time.monotonic() - down_since,
                    *resubscribed,
                )
            first = False
            down_since = None
            self._set_up()
            self._first_attempt.set()
            try:
                await self._read_forever(conn)
            except (RedisError, OSError, TimeoutError) as exc:
                if self._closed:
                    return
                reason = _describe(exc)
                logger.warning(
                    "redis broker: lost the connection to %s (%s); local clients are still "
                    "served, messages sent meanwhile get an error; reconnecting",
                    self._shown_url,
                    reason,
                )
                down_since = time.monotonic()
                self._set_down(f"lost the connection to Redis at {self._shown_url} ({reason})")
            finally:
                await conn.disconnect(nowait=True)
                if self._conn is conn:
                    self._conn = None

    def _set_up(self) -> None:
        self._up = True
        assert self._up_event is not None
        self._up_event.set()
        self._kick_syncer()  # rooms that changed during the connection phase

    def _set_down(self, reason: str) -> None:
        self._up = False
        self._down_reason = reason
        if self._up_event is not None:
            self._up_event.clear()
        self._sent.clear()
        for state in self._rooms.values():
            state.ready.clear()
        barriers, self._barriers = self._barriers, {}
        for future in barriers.values():
            if not future.done():
                future.set_exception(BrokerError(reason))

    async def _connect(self) -> tuple[AbstractConnection, tuple[int, int]]:
        """Open the pub/sub connection, subscribe to every room, fill each room's gap.

        Returns the connection, and how many rooms were resubscribed and messages
        recovered. Messages that arrive while the gaps are read wait in a buffer and
        go out after them, without duplicates (ids at or below the last one
        delivered are dropped), so each room's order is kept.
        """
        await self._redis.connection_pool.disconnect()  # stale after a Redis restart
        self._sha = await self._redis.script_load(PUBLISH_SCRIPT)
        conn: AbstractConnection = self._sub_pool.make_connection()  # type: ignore[no-untyped-call]
        self._conn = conn
        try:
            return await self._subscribe_all(conn)
        except BaseException:
            await conn.disconnect(nowait=True)
            self._conn = None
            raise

    async def _subscribe_all(
        self, conn: AbstractConnection
    ) -> tuple[AbstractConnection, tuple[int, int]]:
        async with asyncio.timeout(self._timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
            rooms = list(self._rooms.values())
            if not rooms:
                return conn, (0, 0)
            self._sent.update(st.name for st in rooms)
            await conn.send_command("SUBSCRIBE", *[st.channel for st in rooms])
            buffered: list[tuple[bytes, bytes]] = []
            await self._read_until_pong(conn, b"epws-subscribed", buffered, self._timeout)
            # As in _sync_subscriptions: rooms this process had before fill their gap
            # from their last id; rooms that are new meanwhile start at their top.
            known = [st for st in rooms if st.last is not None]
            fresh = [st for st in rooms if st.last is None]
            async with self._redis.pipeline(transaction=False) as pipe:
                for state in known:
                    assert state.last is not None
                    pipe.xrange(state.log_key, state.last[1], count=MAX_FILL + 1)
                    pipe.xinfo_stream(state.log_key)
                for state in fresh:
                    pipe.xrevrange(state.log_key, count=1)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            await self._read_until_pong(conn, b"epws-filled", buffered, self._timeout)
        filled = self._fill(known, results[: 2 * len(known)])
        for state, entries in zip(fresh, results[2 * len(known) :], strict=True):
            if isinstance(entries, Exception):
                raise entries
            state.advance(_top(entries))
        for channel, data in buffered:
            self._on_message(channel, data)
        for state in rooms:
            if self._rooms.get(state.name) is state and state.name in self._sent:
                state.ready.set()
        return conn, (len(rooms), filled)

    @staticmethod
    async def _read_until_pong(
        conn: AbstractConnection,
        token: bytes,
        buffered: list[tuple[bytes, bytes]],
        timeout: float,
    ) -> None:
        """Send a PING and read up to its answer, keeping the messages met on the way."""
        await conn.send_command("PING", token)
        while True:
            reply = await conn.read_response(timeout=timeout)
            if reply is None:
                raise TimeoutError(f"no answer to PING within {timeout:g} s")
            if isinstance(reply, list):
                if reply[0] == b"message":
                    buffered.append((reply[1], reply[2]))
                elif reply[0] == b"pong" and reply[1] == token:
                    return

    def _fill(self, rooms: list[_RoomState], results: list[Any]) -> int:
        """Deliver what each room's stream holds after the last id delivered.

        ``results`` holds, per room, the stream read from the last id INCLUSIVE and
        ``XINFO STREAM``; when they cannot prove the gap whole (trimmed past it, or
        the stream lost while we were away), the room's members are told.
        """
        count = 0
        for i, state in enumerate(rooms):
            room = state.name
            entries, info = results[2 * i], results[2 * i + 1]
            last = state.last
            if isinstance(entries, Exception):
                entries = []
            whole = last is None or (
                len(entries) <= MAX_FILL and is_complete(last[0], entries, info)
            )
            for message in self._decode_entries(room, entries):
                key = _id_key(message.id)
                last = state.last
                if self._rooms.get(room) is not state or (last is not None and key <= last[0]):
                    continue
                state.last = (key, message.id.encode())
                count += 1
                self._deliver_one(message)
            if not whole and self._rooms.get(room) is state and self._gap is not None:
                logger.warning("redis broker: room %s: messages may have been lost", room)
                try:
                    self._gap(room)
                except Exception:
                    logger.exception("redis broker: reporting a gap in room %s failed", room)
        self.recovered += count
        return count

    async def _read_forever(self, conn: AbstractConnection) -> None:
        """Hand each pub/sub message to the hub; PING after silence, fail without answer."""
        pinged = False
        interval = self._health_interval
        while not self._closed:
            reply = await conn.read_response(timeout=interval)
            if reply is None:
                if pinged:
                    raise TimeoutError(f"no answer to PING within {interval:g} s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if isinstance(reply, list):
                kind = reply[0]
                if kind == b"message":
                    self._on_message(reply[1], reply[2])
                elif kind == b"pong" and len(reply) > 1:
                    future = self._barriers.pop(reply[1], None)
                    if future is not None and not future.done():
                        future.set_result(None)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        """One pub/sub message: checked, deduplicated, delivered; never raises.

        A malformed payload (anyone can PUBLISH on the channel) is counted, logged
        and skipped; an error in ``deliver`` is logged: neither may end the listener,
        which would leave the process deaf while it still looks connected.
        """
        state = self._channels.get(channel)
        if state is None:
            return  # a room this process left; its UNSUBSCRIBE is on its way
        room = state.name
        if not isinstance(data, bytes):
            self._bad(BadEntry(f"room {room}: a pub/sub payload that is not a string"))
            return
        raw, _, body = data.partition(b" ")
        try:
            message = decode_entry(room, raw, body)
        except BadEntry as exc:
            self._bad(exc)
            return
        key = _id_key(raw)
        last = state.last
        if last is not None and key <= last[0]:
            return  # already delivered from the stream after a reconnection
        state.last = (key, raw)
        self._deliver_one(message)

    def _deliver_one(self, message: ChatMessage) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        try:
            deliver(message)
        except Exception:
            logger.exception("redis broker: delivering a message of room %s failed", message.room)

    def _bad(self, exc: BadEntry) -> None:
        self.bad += 1
        # The first few, then one in a thousand: a flood of junk cannot flood the log.
        if self.bad <= 10 or self.bad % 1000 == 0:
            logger.warning("redis broker: skipped a malformed entry (%d so far): %s", self.bad, exc)

    def _decode_entries(self, room: str, entries: list[Any]) -> list[ChatMessage]:
        """Stream entries as messages, malformed ones skipped (and counted)."""
        out = []
        for raw, fields in entries:
            try:
                body = fields.get(b"d") if isinstance(fields, dict) else None
                if not isinstance(body, bytes):
                    raise BadEntry(f"room {room}: stream entry {raw[:40]!r} has no 'd' field")
                out.append(decode_entry(room, raw, body))
            except BadEntry as exc:
                self._bad(exc)
        return out

    # ------------------------------------------------------------- publishing

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        if not self._up or self._closed:
            on_error(BrokerError(self._down_reason))
            return
        body = json.dumps([name, text, time.time()], ensure_ascii=False, separators=(",", ":"))
        self._batch.append((room, body.encode(), on_error))
        if self._publisher is None:
            assert self._loop is not None
            self._publisher = self._loop.create_task(self._publish_batches())

    async def _publish_batches(self) -> None:
        """Send the queue as pipelines, one at a time, until it is empty."""
        try:
            while self._batch:
                batch = self._batch[:MAX_BATCH]
                del self._batch[:MAX_BATCH]
                await self._until_subscribed({room for room, _, _ in batch})
                try:
                    results = await self._send_batch(batch)
                except (RedisError, OSError, TimeoutError) as exc:
                    if isinstance(exc, (TimeoutError, RedisTimeoutError)):
                        # Sent, never answered: Redis may still run it (a pause, not
                        # a crash). The sender is told the truth: unconfirmed.
                        error: BrokerError = BrokerUnsure(
                            f"Redis at {self._shown_url} did not answer in time; "
                            "the message may still reach the room"
                        )
                    else:
                        error = BrokerError(f"Redis at {self._shown_url} failed ({_describe(exc)})")
                    for _, _, on_error in batch:
                        on_error(error)
                    continue
                except Exception as exc:  # a bug: the senders still hear of it
                    logger.exception("redis broker: publishing failed")
                    error = BrokerError(f"publishing failed ({_describe(exc)})")
                    for _, _, on_error in batch:
                        on_error(error)
                    continue
                for (_, _, on_error), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        on_error(BrokerError(f"Redis refused the message ({result})"))
        finally:
            self._publisher = None

    async def _until_subscribed(self, rooms: set[str]) -> None:
        """Wait (bounded, ONE deadline for the batch) until this process receives
        ``rooms``: a client that joins and speaks at once must see its own line, as
        with the memory broker."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                for room in rooms:
                    state = self._rooms.get(room)
                    if state is not None and not state.ready.is_set():
                        await state.ready.wait()

    async def _barrier(self) -> None:
        """Wait until the listener has delivered every message published before now.

        A PING on the pub/sub connection is answered after every message Redis
        queued for this process before it: once its answer is read, each live
        message of what :meth:`history` just read has been delivered (to the
        joining client's holding list, where it is dropped as a duplicate) and
        none can arrive after the history lines.
        """
        conn = self._conn
        if conn is None or not self._up or self._loop is None:
            raise BrokerError(self._down_reason)
        self._barrier_count += 1
        token = b"epws-barrier-%d" % self._barrier_count
        future: asyncio.Future[None] = self._loop.create_future()
        self._barriers[token] = future
        try:
            await conn.send_command("PING", token)
            async with asyncio.timeout(self._timeout):
                await future
        finally:
            self._barriers.pop(token, None)

    async def _send_batch(self, batch: list[_Pending]) -> list[Any]:
        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted (its script cache is empty): load the script again and
            # resend the messages that did not run (NOSCRIPT means not executed).
            self._sha = await self._redis.script_load(PUBLISH_SCRIPT)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            retried = await self._pipeline([batch[i] for i in again])
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, batch: list[_Pending]) -> list[Any]:
        sha = self._sha
        if sha is None:
            sha = self._sha = await self._redis.script_load(PUBLISH_SCRIPT)
        maxlen, trim, keep = self._maxlen, self._trim, self._retention
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, body, _ in batch:
                pipe.evalsha(
                    sha, 1, self._log_key(room), self._channel(room), body, maxlen, trim, keep
                )
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    # ------------------------------------------------------------- history

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        return (await self.page(room, after=after, limit=limit)).messages

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        """The room's latest messages from its stream, oldest first, and whether a
        resume from ``after`` is whole (:func:`is_complete`).

        For a room this process has just subscribed to, the read waits until the
        subscription is confirmed: everything newer than what it returns then
        arrives live (the client drops the overlap by id).
        """
        if limit <= 0:
            return Page([], after is None)
        if not self._up:
            raise BrokerError(self._down_reason)
        after_key = _id_key(after) if after else None  # ValueError: the caller checks
        key = self._log_key(room)
        state = self._rooms.get(room)
        try:
            if state is not None and not state.ready.is_set():
                async with asyncio.timeout(self._timeout):
                    await state.ready.wait()
            async with self._redis.pipeline(transaction=False) as pipe:
                if after is None:
                    pipe.xrevrange(key, b"+", b"-", count=limit)
                else:
                    # From ``after`` INCLUSIVE: its own entry proves nothing was trimmed.
                    pipe.xrange(key, after.encode(), b"+", count=limit + 2)
                    pipe.xinfo_stream(key)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if isinstance(results[0], Exception):
                raise results[0]
            if results[0] and state is not None and self._rooms.get(room) is state:
                await self._barrier()
        except TimeoutError:
            raise BrokerError("Redis did not answer in time") from None
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis at {self._shown_url} failed ({_describe(exc)})") from None
        if after_key is None:
            return Page(self._decode_entries(room, list(reversed(results[0]))), True)
        assert after is not None
        entries = results[0]
        complete = is_complete(after_key, entries, results[1])
        newer = [e for e in entries if _id_key(e[0]) > after_key]
        if len(newer) > limit:
            complete = False
            newer = newer[-limit:]  # the gap is longer than the page: the latest part
            # (XRANGE from after read the OLDEST; a long gap is rare, read the tail)
            tail: Any = await self._tail(key, after, limit)
            if tail is not None:
                newer = tail
        return Page(self._decode_entries(room, newer), complete)

    async def _tail(self, key: bytes, after: str, limit: int) -> list[Any] | None:
        try:
            entries: Any = await self._redis.xrevrange(
                key, b"+", b"(" + after.encode(), count=limit
            )
        except (RedisError, OSError, TimeoutError):
            return None
        return list(reversed(entries))


def _top(entries: Any) -> bytes:
    """The id of an ``XREVRANGE ... COUNT 1`` answer ("0-0" for an empty stream or a
    malformed id, which then counts as the beginning)."""
    if entries:
        raw = entries[0][0]
        try:
            _id_key(raw)
        except ValueError:
            return b"0-0"
        return bytes(raw)
    return b"0-0"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""RedisBroker: many chat processes (on one machine or many) share rooms through Redis.

The design is Centrifugo's Redis engine in miniature (see docs/deployment.md): a
capped stream per room for history and a Lua script that appends to it and
PUBLISHes in one step (:mod:`~epws_chat.brokers.wire`, sent in batches by
:mod:`~epws_chat.brokers.publisher`); one pub/sub connection per process, subscribed
only to the rooms with local members (:mod:`~epws_chat.brokers.subscriptions`) and
read by one supervised task that reconnects after every loss and fills each room's
gap from its stream (:mod:`~epws_chat.brokers.listener`); each process's members
in a hash per room, renewed by heartbeats (:mod:`~epws_chat.brokers.presence`).
This module puts them together behind the :class:`~epws_chat.brokers.base.Broker`
interface and reads history; only this package knows it is Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import (
    BrokerError,
    ChatMessage,
    Deliver,
    Gap,
    OnError,
    Page,
    PresenceHost,
    message_id_key,
)
from .listener import Listener, describe, redact
from .presence import Presence
from .publisher import Publisher
from .subscriptions import Subscriptions
from .wire import Keys, decode_stream, is_complete

if TYPE_CHECKING:
    from ..metrics import Counters

__all__ = ["MAX_CONNECTIONS", "RedisBroker"]

#: Command connections to Redis per process (the pub/sub connection comes on top).
MAX_CONNECTIONS = 32


class RedisBroker:
    """The chat's broker for several processes: Redis pub/sub + a capped stream per room.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket``.
        history: messages kept per room (the stream's MAXLEN; exact below 100,
            approximate above, where Redis trims whole stream nodes); it also bounds
            how far back a reconnecting process can fill a gap.
        prefix: prefix of the Redis keys and channels.
        timeout: seconds a Redis command or connection attempt may take, and a
            message may wait for its room's subscription.
        backoff: smallest and largest delay between reconnection attempts.
        health_interval: seconds of silence on the pub/sub connection after which a
            PING is sent; no answer within as long again counts as a lost connection
            (a half-open TCP connection is not noticed otherwise).
        retention: seconds a room's stream lives after its last message (an EXPIRE
            refreshed by each message; 0: forever). Abandoned rooms are freed.
        presence_interval: seconds between presence heartbeats; the members of a
            process that dies without a goodbye stop counting on the others within
            3 times this (:mod:`~epws_chat.brokers.presence`).
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
        presence_interval: float = 5.0,
    ) -> None:
        if history < 0:
            raise ValueError("history must not be negative")
        self.url = url
        self._shown_url = redact(url)
        self._timeout = timeout
        no_retry = Retry(NoBackoff(), 0)  # failures are reported, never silently repeated
        # Commands wait (up to ``timeout``) for one of MAX_CONNECTIONS connections: a
        # burst of joining clients (a history read each) neither opens hundreds of
        # connections nor fails ("Too many connections" from redis-py's default pool).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        self._redis: Redis = Redis.from_pool(pool)
        # The pub/sub connection waits for messages indefinitely (socket_timeout None);
        # the listener's PING watchdog replaces the timeout. RESP2 keeps pub/sub
        # messages plain arrays.
        sub_pool: ConnectionPool = ConnectionPool.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=no_retry,
            protocol=2,
        )
        self._keys = keys = Keys(prefix)
        self._subscriptions = Subscriptions(self._redis, keys, timeout=timeout)
        self._listener = Listener(
            sub_pool,
            self._subscriptions,
            self._prepare,
            shown_url=self._shown_url,
            timeout=timeout,
            backoff=backoff,
            health_interval=health_interval,
        )
        self._subscriptions.link = self._listener
        self._publisher = Publisher(
            self._redis,
            keys,
            self._subscriptions,
            self._listener,
            history=history,
            retention=retention,
            timeout=timeout,
        )
        self._presence = Presence(
            self._redis, keys, self._subscriptions, self._listener, interval=presence_interval
        )
        self._subscriptions.presence = self._presence
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisBroker {self._shown_url} {'up' if self.connected else 'down'}>"

    # ------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        """True while Redis is reachable and the subscriptions are in place."""
        return self._listener.up

    @property
    def recovered(self) -> int:
        """Messages delivered from the streams after reconnections (each one would
        have been lost with pub/sub alone)."""
        return self._subscriptions.recovered

    @property
    def bad(self) -> int:
        """Malformed entries met (pub/sub payloads and stream entries), skipped."""
        return self._subscriptions.bad

    @property
    def reconnects(self) -> int:
        """Times the pub/sub connection came back after a loss."""
        return self._listener.reconnects

    async def wait_connected(self) -> None:
        """Wait until :attr:`connected` (for health checks and tests)."""
        await self._listener.wait_up()

    # ------------------------------------------------------------- lifecycle

    async def start(
        self,
        deliver: Deliver,
        gap: Gap | None = None,
        *,
        stats: Counters | None = None,
        presence: PresenceHost | None = None,
    ) -> None:
        """Start the listener; wait (at most ``timeout``) for the first connection.

        Redis being down at start is not fatal: the chat serves its local clients
        and the listener keeps trying, as after any loss of the connection.
        ``gap(room)`` is called when, after a reconnection, a room's stream cannot
        prove that every message missed meanwhile was recovered. ``stats`` gets
        the publish latency (from :meth:`publish` to Redis's answer, per message)
        and the reconnections. ``presence`` (the hub) has its members shared with
        every process and hears of theirs.
        """
        self._subscriptions.deliver = deliver
        self._subscriptions.gap = gap
        self._publisher.stats = self._listener.stats = stats
        self._presence.host = presence
        await self._listener.start()
        if presence is not None:
            self._presence.start()

    async def _prepare(self) -> None:
        """Before each pub/sub connection: fresh command connections (stale after a
        Redis restart) and the publish script loaded.

        Only idle connections are dropped: one in use carries a batch that Redis may
        still run (a pause), whose senders must hear "unconfirmed" from its own
        timeout, not a false "failed" from being cut here.
        """
        await self._redis.connection_pool.disconnect(inuse_connections=False)
        await self._publisher.load_script()

    async def close(self) -> None:
        """Send what is queued (briefly), stop the tasks, close the connections."""
        if self._closed:
            return
        self._closed = True
        await self._publisher.close()
        await self._presence.close()
        await self._listener.close("the chat is shutting down")
        self._subscriptions.deliver = None
        await self._redis.aclose()

    # ------------------------------------------------------------- the interface

    def subscribe(self, room: str) -> None:
        self._subscriptions.add(room)

    def unsubscribe(self, room: str) -> None:
        self._subscriptions.remove(room)

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        self._publisher.publish(room, name, text, on_error)

    def presence_changed(self, room: str, name: str) -> None:
        self._presence.changed(room, name)

    def remote_members(self, room: str) -> Mapping[str, int]:
        record = self._subscriptions.rooms.get(room)
        return record.remote_total if record is not None else {}

    async def read_presence(self, room: str) -> dict[str, int]:
        """The room's members on every other live process, from Redis."""
        if not self._listener.up:
            raise BrokerError(self._listener.down_reason)
        try:
            return await self._presence.read(room)
        except TimeoutError:
            raise BrokerError("Redis did not answer in time") from None
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis at {self._shown_url} failed ({describe(exc)})") from None

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        return (await self.page(room, after=after, limit=limit)).messages

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        """The room's latest messages from its stream, oldest first, and whether a
        resume from ``after`` is whole (:func:`~epws_chat.brokers.wire.is_complete`).

        For a room this process has just subscribed to, the read waits until the
        subscription is confirmed: everything newer than what it returns then
        arrives live (the client drops the overlap by id).
        """
        if limit <= 0:
            return Page([], after is None)
        listener = self._listener
        if not listener.up:
            raise BrokerError(listener.down_reason)
        after_key = message_id_key(after) if after else None  # ValueError: the caller checks
        key = self._keys.log(room)
        record = self._subscriptions.rooms.get(room)
        try:
            if record is not None and not record.ready.is_set():
                async with asyncio.timeout(self._timeout):
                    await record.ready.wait()
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
            if results[0] and record is not None and self._subscriptions.rooms.get(room) is record:
                # Every live message up to what was read has been delivered (to the
                # joining client's held_for_history, where it is dropped as a duplicate):
                # none can arrive after the history lines.
                await listener.barrier(listener.conn)
        except TimeoutError:
            raise BrokerError("Redis did not answer in time") from None
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis at {self._shown_url} failed ({describe(exc)})") from None
        bad = self._subscriptions.count_bad
        if after_key is None:
            return Page(decode_stream(room, list(reversed(results[0])), bad), True)
        assert after is not None
        entries = results[0]
        complete = is_complete(after_key, entries, results[1])
        newer = [e for e in entries if message_id_key(e[0]) > after_key]
        if len(newer) > limit:
            complete = False
            newer = newer[-limit:]  # the gap is longer than the page: the latest part
            # (XRANGE from after read the OLDEST; a long gap is rare, read the tail)
            tail = await self._tail(key, after, limit)
            if tail is not None:
                newer = tail
        return Page(decode_stream(room, newer, bad), complete)

    async def _tail(self, key: bytes, after: str, limit: int) -> list[Any] | None:
        try:
            entries: Any = await self._redis.xrevrange(
                key, b"+", b"(" + after.encode(), count=limit
            )
        except (RedisError, OSError, TimeoutError):
            return None
        return list(reversed(entries))

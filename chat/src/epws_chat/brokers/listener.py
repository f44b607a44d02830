"""The Redis broker's listener: the one pub/sub connection of a process, read by one
supervised task, reconnected with backoff after every loss.

* **Reading.** Each message goes to the subscriptions
  (:meth:`~epws_chat.brokers.subscriptions.Subscriptions.receive`), which deliver it to
  the hub once, in order. After ``health_interval`` seconds of silence a PING goes
  out; no answer within as long again counts as a lost connection (a half-open TCP
  connection is not noticed otherwise).
* **Barriers.** A PING on the pub/sub connection is answered after every message
  Redis queued for this process before it; :meth:`Listener.barrier` waits for that
  answer, which is how the subscribe sequence and history reads know that every live
  message up to a point has been handled.
* **Reconnection.** When Redis goes away the local clients keep being served: one
  log line, reconnection with exponential backoff and jitter; each connection runs
  the subscribe sequence for every room (filling gaps from the streams) before the
  broker counts as connected again. While it is not, publishes fail at once with a
  clear error instead of vanishing.
* **Supervision.** An unexpected error (a bug) is logged with its traceback, the
  broker is marked down and the listener starts again: a dead listener would leave
  the process deaf forever while publishes still succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from .base import BrokerError
from .subscriptions import Subscriptions
from .tasks import stop

if TYPE_CHECKING:
    from ..metrics import Counters

__all__ = ["Listener", "describe", "redact"]

logger = logging.getLogger("epws_chat.redis")


def redact(url: str) -> str:
    """The URL for logs, without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def describe(exc: BaseException) -> str:
    """An exception as a short phrase for logs and for the senders' error lines."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Listener:
    """The pub/sub connection, its reader, its state (up or down) and its barriers.

    Args:
        pool: makes pub/sub connections (no socket timeout: the PING watchdog
            replaces it).
        subscriptions: where messages go, and the subscribe sequence run on each
            connection.
        prepare: run before each connection (e.g. loading the publish script): a
            failure counts as Redis being unreachable.
        shown_url: the Redis URL for logs (no password).
        timeout: seconds a connection attempt may take.
        backoff: smallest and largest delay between reconnection attempts.
        health_interval: seconds of silence after which a PING is sent.

    Attributes:
        conn: the current pub/sub connection (None between connections).
        up: True while Redis is reachable and the subscriptions are in place.
        down_reason: why it is not (what senders are told).
        reconnects: times the connection came back after a loss.
        stats: where reconnections are counted too (None: nowhere).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        subscriptions: Subscriptions,
        prepare: Callable[[], Awaitable[None]],
        *,
        shown_url: str,
        timeout: float,
        backoff: tuple[float, float],
        health_interval: float,
    ) -> None:
        self.pool = pool
        self.subscriptions = subscriptions
        self.prepare = prepare
        self.shown_url = shown_url
        self.timeout = timeout
        self.backoff = backoff
        self.health_interval = health_interval
        self.conn: AbstractConnection | None = None
        self.up = False
        self.down_reason = "not connected to Redis yet"
        self.reconnects = 0
        self.stats: Counters | None = None
        self.closed = False
        self._up_event: asyncio.Event | None = None
        self._first_attempt: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_count = 0
        self._down_since: float | None = None
        self._ever_up = False

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the listener; wait (at most ``timeout``) for the first connection."""
        loop = asyncio.get_running_loop()
        self._up_event = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task = loop.create_task(self._supervise())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout + 1):
                await self._first_attempt.wait()

    async def close(self, reason: str) -> None:
        """Stop reading and close the connection; the broker is down for ``reason``."""
        self.closed = True
        await stop(self._task)
        self._set_down(reason)
        if self.conn is not None:
            await self.conn.disconnect(nowait=True)
        await self.pool.disconnect()

    async def wait_up(self) -> None:
        """Wait until :attr:`up`."""
        if self._up_event is None:
            raise RuntimeError("the broker is not started")
        await self._up_event.wait()

    # ------------------------------------------------------------- barriers

    async def barrier(self, conn: AbstractConnection | None) -> None:
        """Wait until every message Redis sent on ``conn`` before now was handled.

        BrokerError if ``conn`` is not the current connection or is lost meanwhile;
        TimeoutError after ``timeout``.
        """
        if conn is None or conn is not self.conn or self.closed:
            raise BrokerError(self.down_reason)
        self._barrier_count += 1
        token = b"epws-barrier-%d" % self._barrier_count
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = future
        try:
            await conn.send_command("PING", token)
            async with asyncio.timeout(self.timeout):
                await future
        finally:
            self._barriers.pop(token, None)

    # ------------------------------------------------------------- the loop

    async def _supervise(self) -> None:
        """Run the listener; restart it (logged, after a pause) if a bug ends it."""
        while not self.closed:
            try:
                await self._listen_forever()
                return
            except Exception as exc:
                logger.exception("redis broker: the listener failed; restarting it")
                self._set_down(f"the Redis listener failed ({describe(exc)})")
                conn, self.conn = self.conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                if self._first_attempt is not None:
                    self._first_attempt.set()
                await asyncio.sleep(self.backoff[0])

    async def _listen_forever(self) -> None:
        """Connect, listen, and after any failure reconnect with backoff and jitter."""
        attempt = 0
        first = True
        assert self._first_attempt is not None
        while not self.closed:
            conn: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
            self.conn = conn
            try:
                async with asyncio.timeout(self.timeout):
                    await self.prepare()
                    await conn.connect()  # type: ignore[no-untyped-call]
                await self._session(conn)
            except (RedisError, OSError, TimeoutError, BrokerError) as exc:
                if self.closed:
                    return
                reason = describe(exc)
                if self.up:  # live until now: reconnect at once
                    logger.warning(
                        "redis broker: lost the connection to %s (%s); local clients are "
                        "still served, messages sent meanwhile get an error; reconnecting",
                        self.shown_url,
                        reason,
                    )
                    self._down_since = time.monotonic()
                    self._set_down(f"lost the connection to Redis at {self.shown_url} ({reason})")
                    attempt = 0
                    continue
                if first or self._down_since is None:
                    logger.warning(
                        "redis broker: cannot reach %s (%s); serving local clients only, "
                        "retrying with backoff",
                        self.shown_url,
                        reason,
                    )
                    self._down_since = self._down_since or time.monotonic()
                self._set_down(f"Redis at {self.shown_url} is unreachable ({reason})")
                first = False
                self._first_attempt.set()
                low, high = self.backoff
                delay = min(high, low * 2**attempt) * random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 30)
                await asyncio.sleep(delay)
            finally:
                await conn.disconnect(nowait=True)
                if self.conn is conn:
                    self.conn = None

    async def _session(self, conn: AbstractConnection) -> None:
        """Read ``conn`` and keep its subscriptions until one of the two fails (which
        raises what ended the connection); the broker is up once every room is live."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_forever(conn))
        syncer = loop.create_task(self.subscriptions.run(conn, self._set_up))
        try:
            done, _ = await asyncio.wait({reader, syncer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, syncer):
                task.cancel()
            await asyncio.gather(reader, syncer, return_exceptions=True)

    async def _read_forever(self, conn: AbstractConnection) -> None:
        """Hand each pub/sub message on; PING after silence, fail without an answer."""
        pinged = False
        interval = self.health_interval
        receive = self.subscriptions.receive
        while not self.closed:
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
                    receive(reply[1], reply[2])
                elif kind == b"pong" and len(reply) > 1:
                    future = self._barriers.pop(reply[1], None)
                    if future is not None and not future.done():
                        future.set_result(None)

    # ------------------------------------------------------------- state

    def _set_up(self, rooms: int, recovered: int) -> None:
        if self._ever_up and self._down_since is not None:
            logger.info(
                "redis broker: reconnected to %s after %.1f s; resubscribed %d room(s), "
                "recovered %d missed message(s)",
                self.shown_url,
                time.monotonic() - self._down_since,
                rooms,
                recovered,
            )
            self.reconnects += 1
            if self.stats is not None:
                self.stats.broker_reconnects += 1
        else:
            logger.info("redis broker: connected to %s", self.shown_url)
        self._ever_up = True
        self._down_since = None
        self.up = True
        assert self._up_event is not None and self._first_attempt is not None
        self._up_event.set()
        self._first_attempt.set()

    def _set_down(self, reason: str) -> None:
        self.up = False
        self.down_reason = reason
        if self._up_event is not None:
            self._up_event.clear()
        self.subscriptions.connection_lost()
        barriers, self._barriers = self._barriers, {}
        for future in barriers.values():
            if not future.done():
                future.set_exception(BrokerError(reason))

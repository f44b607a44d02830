"""The Redis broker's publisher: messages queued without waiting, sent as pipelines.

* **One Lua script per message** (:data:`~epws_chat.brokers.wire.PUBLISH_SCRIPT`)
  appends it to the room's capped stream and PUBLISHes it with the id XADD assigned.
  The script runs atomically in Redis's single thread, so the id order IS the
  delivery order for every process: all members of a room see the same order, and
  history and live lines agree.
* **Publishing never waits.** :meth:`Publisher.publish` queues the message; one task
  sends everything queued during a loop iteration as ONE pipeline, and while that
  pipeline is in flight the next batch gathers (so batches grow with the load, and a
  process's messages reach Redis in the order it received them). A failed batch
  reports a :class:`~epws_chat.brokers.base.BrokerError` for each of its messages,
  which the client turns into an error line for its sender.
* **A room that is not live yet waits alone.** Its messages are parked in its record
  until it is ready (at most ``timeout``), so that a client that joins and speaks at
  once sees its own line; the other rooms' messages go out meanwhile, and the
  parked ones keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, TimeoutError as RedisTimeoutError

from .base import BrokerError, BrokerUnsure, OnError
from .listener import Listener, describe
from .subscriptions import RoomRecord, Subscriptions
from .tasks import stop
from .wire import PUBLISH_SCRIPT, Keys, encode_body

if TYPE_CHECKING:
    from ..metrics import Counters

__all__ = ["MAX_BATCH", "Pending", "Publisher"]

logger = logging.getLogger("epws_chat.redis")

#: Largest number of messages sent in one pipeline (a longer queue takes several).
MAX_BATCH = 1000

#: A message on its way: room, body, who hears of a failure, and time.perf_counter()
#: when it was queued (not loop.time(): uvloop's counts whole milliseconds, so the
#: publish latency of a loopback round trip read 0).
Pending = tuple[str, bytes, OnError, float]


class Publisher:
    """The queue of messages to send, and the task that sends it.

    Args:
        redis: the command connection pool.
        keys: key and channel names.
        subscriptions: the rooms' records (readiness, and where parked messages wait).
        listener: whether Redis is reachable now, and why not.
        history: the streams' MAXLEN (exact below 100, approximate above).
        retention: seconds a stream lives after its last message (0: forever).
        timeout: seconds a message may wait for its room to become live.

    Attributes:
        stats: where the latency of each confirmed message is observed, from
            :meth:`publish` to Redis's answer (None: not timed).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriptions: Subscriptions,
        listener: Listener,
        *,
        history: int,
        retention: float,
        timeout: float,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.subscriptions = subscriptions
        self.listener = listener
        self.timeout = timeout
        self._maxlen = str(history).encode()
        self._trim = b"=" if history < 100 else b"~"
        self._retention = str(max(0, int(retention))).encode()
        self._sha: str | None = None
        self._queue: list[Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats: Counters | None = None
        subscriptions.on_ready = self.release

    async def load_script(self) -> None:
        """Load the publish script (on every connection: a restarted Redis forgot it)."""
        self._sha = await self.redis.script_load(PUBLISH_SCRIPT)

    # ------------------------------------------------------------- queueing

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        """Queue a message; it goes out with this loop iteration's batch, or when its
        room is ready. Failures go to ``on_error``."""
        if not self.listener.up or self._closed:
            on_error(BrokerError(self.listener.down_reason))
            return
        loop = asyncio.get_running_loop()
        item = (room, encode_body(name, text, time.time()), on_error, time.perf_counter())
        record = self.subscriptions.rooms.get(room)
        if record is not None and (record.parked is not None or not record.ready.is_set()):
            if record.parked is None:
                record.parked = []
                record.park_timer = loop.call_later(self.timeout, self.release, record)
            record.parked.append(item)
            return
        self._queue.append(item)
        self._kick(loop)

    def release(self, record: RoomRecord) -> None:
        """Send ``record``'s parked messages: it is ready, gone, or waited long enough."""
        if record.park_timer is not None:
            record.park_timer.cancel()
            record.park_timer = None
        parked, record.parked = record.parked, None
        if parked:
            self._queue.extend(parked)
            self._kick(asyncio.get_running_loop())

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._task = loop.create_task(self._publish_batches())

    async def close(self) -> None:
        """Send what is queued (for at most 2 s); what remains gets an error."""
        self._closed = True
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(2):
                    await asyncio.shield(task)
            except TimeoutError:
                await stop(task)
        failed, self._queue = self._queue, []
        for record in self.subscriptions.rooms.values():
            if record.park_timer is not None:
                record.park_timer.cancel()
                record.park_timer = None
            failed.extend(record.parked or ())
            record.parked = None
        error = BrokerError("the chat is shutting down")
        for _, _, on_error, _ in failed:
            on_error(error)

    # ------------------------------------------------------------- sending

    async def _publish_batches(self) -> None:
        """Send the queue as pipelines, one at a time, until it is empty."""
        try:
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                try:
                    results = await self._send_batch(batch)
                except (RedisError, OSError, TimeoutError) as exc:
                    if isinstance(exc, (TimeoutError, RedisTimeoutError)):
                        # Sent, never answered: Redis may still run it (a pause, not
                        # a crash). The sender is told the truth: unconfirmed.
                        error: BrokerError = BrokerUnsure(
                            f"Redis at {self.listener.shown_url} did not answer in time; "
                            "the message may still reach the room"
                        )
                    else:
                        error = BrokerError(
                            f"Redis at {self.listener.shown_url} failed ({describe(exc)})"
                        )
                    for _, _, on_error, _ in batch:
                        on_error(error)
                    continue
                except Exception as exc:  # a bug: the senders still hear of it
                    logger.exception("redis broker: publishing failed")
                    error = BrokerError(f"publishing failed ({describe(exc)})")
                    for _, _, on_error, _ in batch:
                        on_error(error)
                    continue
                stats = self.stats
                latency = stats.publish_latency if stats is not None else None
                now = time.perf_counter()
                for (_, _, on_error, queued), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        on_error(BrokerError(f"Redis refused the message ({result})"))
                    elif latency is not None:
                        latency.observe(now - queued)
        finally:
            self._task = None

    async def _send_batch(self, batch: list[Pending]) -> list[Any]:
        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted (its script cache is empty): load the script again and
            # resend the messages that did not run (NOSCRIPT means not executed).
            await self.load_script()
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            retried = await self._pipeline([batch[i] for i in again])
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, batch: list[Pending]) -> list[Any]:
        if self._sha is None:
            await self.load_script()
        sha = self._sha
        assert sha is not None
        maxlen, trim, keep, keys = self._maxlen, self._trim, self._retention, self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for room, body, _, _ in batch:
                pipe.evalsha(sha, 1, keys.log(room), keys.channel(room), body, maxlen, trim, keep)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

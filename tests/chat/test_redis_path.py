"""The TCP path between a chat process and Redis, cut, black-holed or slowed.

A small asyncio proxy sits between one chat process and Redis (another process talks
to Redis directly), so the test can break the path the way networks break: a cut
(both ends reset), a black hole (the connection stays open and nothing passes, a
half-open TCP connection), a slow link. The chat must notice, tell senders, keep
serving, and afterwards deliver every line Redis accepted, or say it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from epws_chat.brokers import BrokerError, ChatMessage
from epws_chat.brokers.redis import RedisBroker
from epws_chat.server import Chat, start_chat

from .redis_server import RedisServer, redis_server
from .test_faults import broker_of, until_up, wait_for
from .test_redis import Lines, take_messages, v1

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


class Proxy:
    """TCP proxy to ``127.0.0.1:upstream``; ``mode`` is "pass", "blackhole" or "slow".

    ``subscribe_delay``: seconds each chunk sent to Redis that holds a SUBSCRIBE is
    held (in any mode): a slow pub/sub path for subscription changes only.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.delay = 0.0
        self.subscribe_delay = 0.0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        # A cut closes both ends under the pumps: writing then raises RuntimeError on
        # uvloop, OSError on asyncio; either way this connection is over.
        with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):
            while data := await src.read(65536):
                while self.mode == "blackhole":
                    await asyncio.sleep(0.02)  # held, never passed on: a black hole
                if self.mode == "slow":
                    await asyncio.sleep(self.delay)
                if self.subscribe_delay and b"SUBSCRIBE" in data:
                    await asyncio.sleep(self.subscribe_delay)
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError, RuntimeError):
            dst.close()

    def cut(self) -> None:
        """Reset every connection through the proxy (new ones are accepted)."""
        for writer in list(self.writers):
            transport = writer.transport
            with contextlib.suppress(OSError):
                transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def path(redis_server: RedisServer) -> AsyncIterator[tuple[Proxy, Chat, Chat]]:
    """(proxy, chat behind the proxy, chat on Redis directly)."""
    proxy = Proxy(redis_server.port)
    port = await proxy.start()
    far = RedisBroker(
        f"redis://127.0.0.1:{port}/0", timeout=1.0, backoff=(0.05, 0.2), health_interval=0.5
    )
    near = RedisBroker(redis_server.url, timeout=1.0, backoff=(0.05, 0.2))
    chats = [
        await start_chat(None, "127.0.0.1", 0, broker=far),
        await start_chat(None, "127.0.0.1", 0, broker=near),
    ]
    try:
        await until_up(chats)
        yield proxy, chats[0], chats[1]
    finally:
        for chat in chats:
            await chat.close(timeout=2)
        await proxy.close()


async def test_a_cut_path_reconnects_and_fills_the_gap(path) -> None:
    proxy, far, near = path
    a, b = await v1(far.port, "dev"), await v1(near.port, "dev")
    la, lb = Lines(a), Lines(b)
    await b.send("before")
    assert [m["text"] for m in await take_messages(la, 1)] == ["before"]
    await take_messages(lb, 1)
    proxy.cut()
    await b.send("during the cut")  # Redis takes it; the far process is not listening
    assert [m["text"] for m in await take_messages(lb, 1)] == ["during the cut"]
    # The far process reconnects and reads the stream after its last id: the line
    # arrives, once, and no "missed" notice (Redis kept everything).
    assert [m["text"] for m in await take_messages(la, 1)] == ["during the cut"]
    await a.send("after")
    for lines in (la, lb):
        assert [m["text"] for m in await take_messages(lines, 1)] == ["after"]
    assert broker_of(far).recovered >= 1
    for conn in (a, b):
        await conn.close()


async def test_a_black_holed_path_is_noticed_and_senders_are_told(path) -> None:
    proxy, far, near = path
    a, b = await v1(far.port, "dev"), await v1(near.port, "dev")
    la, lb = Lines(a), Lines(b)
    await b.send("before")  # both joined and live before the path breaks
    for lines in (la, lb):
        assert [m["text"] for m in await take_messages(lines, 1)] == ["before"]
    proxy.mode = "blackhole"  # half-open: no error, no data
    # The PING watchdog (health_interval 0.5 s) notices within about 1 s.
    await wait_for(lambda: not broker_of(far).connected, 5)
    await a.send(json.dumps({"type": "message", "text": "into the hole"}))
    (answer,) = await la.take(1)
    assert answer["type"] == "error"
    await b.send("while black-holed")  # on the direct process: accepted by Redis
    assert [m["text"] for m in await take_messages(lb, 1)] == ["while black-holed"]
    proxy.mode = "pass"
    proxy.cut()  # the held connections are dead; the next attempts pass
    await until_up([far])
    (seen,) = await la.take(1)
    assert seen["type"] == "message" and seen["text"] == "while black-holed"  # from the stream
    await b.send("after")
    assert [m["text"] for m in await take_messages(la, 1)] == ["after"]
    for conn in (a, b):
        await conn.close()


async def test_a_slow_path_keeps_order_and_loses_nothing(path) -> None:
    proxy, far, near = path
    a, b = await v1(far.port, "dev"), await v1(near.port, "dev")
    la, lb = Lines(a), Lines(b)
    await b.send("before")  # both joined and live before the path slows down
    for lines in (la, lb):
        assert [m["text"] for m in await take_messages(lines, 1)] == ["before"]
    proxy.mode, proxy.delay = "slow", 0.2  # well under the 1 s timeout
    for i in range(5):
        await a.send(f"slow {i}")
        await b.send(f"fast {i}")
    seen_a = [m["text"] for m in await take_messages(la, 10)]
    seen_b = [m["text"] for m in await take_messages(lb, 10)]
    assert seen_a == seen_b  # one order on both processes
    assert [t for t in seen_a if t.startswith("slow")] == [f"slow {i}" for i in range(5)]
    assert broker_of(far).connected
    for conn in (a, b):
        await conn.close()


async def test_a_room_not_live_yet_does_not_delay_the_other_rooms(
    redis_server: RedisServer,
) -> None:
    proxy = Proxy(redis_server.port)
    port = await proxy.start()
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", timeout=2.0, backoff=(0.05, 0.2))
    loop = asyncio.get_running_loop()
    got: list[ChatMessage] = []
    seen: dict[str, float] = {}

    def deliver(message: ChatMessage) -> None:
        got.append(message)
        seen[message.text] = loop.time()

    await broker.start(deliver)
    try:
        await broker.wait_connected()
        broker.subscribe("fast")
        await broker.history("fast", after=None, limit=1)  # live
        proxy.subscribe_delay = 1.0
        broker.subscribe("slow")  # its subscription takes a second to reach Redis
        errors: list[BrokerError] = []
        started = loop.time()
        broker.publish("slow", "n", "slow 1", errors.append)
        broker.publish("fast", "n", "fast 1", errors.append)
        await asyncio.sleep(0)
        broker.publish("fast", "n", "fast 2", errors.append)
        broker.publish("slow", "n", "slow 2", errors.append)
        await wait_for(lambda: "fast 2" in seen, 3)
        # Before the fix the whole batch, and every batch after it, waited for the
        # slow room: about a second here, up to the timeout in general.
        assert seen["fast 2"] - started < 0.5
        await wait_for(lambda: "slow 2" in seen, 3)
        # The slow room's lines waited for its subscription: seen by this process,
        # in the order they were sent.
        assert seen["slow 1"] - started > 0.9
        assert [m.text for m in got if m.room == "slow"] == ["slow 1", "slow 2"]
        assert [m.text for m in got if m.room == "fast"] == ["fast 1", "fast 2"]
        assert errors == []
    finally:
        await broker.close()
        await proxy.close()

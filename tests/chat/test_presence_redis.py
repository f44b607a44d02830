"""Presence across real chat processes sharing a real redis-server.

Each test runs ``epws-chat`` processes (``--broker redis://...``) with a short
``--presence-interval`` and JSON clients that asked for presence (``?presence=1``):
members on one process are seen by the others, joins and leaves cross processes,
``kill -9`` of a process takes its members away within the stated bound (3 x the
interval), a clean shutdown at once, and a burst of joins costs a handful of frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import epws
from epws_chat.client import PROTOCOL

from .redis_server import RedisServer, free_port, redis_server
from .test_cli import ChatProcess, chat_process, running_loop_name
from .test_http import http

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

KEY = "presence-key"
#: The processes' --presence-interval: a crashed process stops counting within 3x.
INTERVAL = 0.5


class Watcher:
    """A JSON client that asked for presence: the room's members as it was told."""

    def __init__(self, conn: epws.Conn) -> None:
        self.conn = conn
        self.members: dict[str, int] = {}
        self.frames = 0  # frames holding presence lines (join, leave, the snapshot)
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(epws.ConnectionClosed):
            async for data in self.conn:
                assert isinstance(data, str)
                kinds = set()
                for line in data.split("\n"):
                    event = json.loads(line)
                    kinds.add(event["type"])
                    if event["type"] == "presence":
                        self.members = dict(event["members"])
                    elif event["type"] in ("join", "leave"):
                        self.events.append(event)
                        if event["connections"]:
                            self.members[event["name"]] = event["connections"]
                        else:
                            self.members.pop(event["name"], None)
                if kinds & {"presence", "join", "leave"}:
                    self.frames += 1
                self.changed.set()

    async def until(self, want: Callable[[dict[str, int]], bool], timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not want(self.members):
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        await self.conn.close()
        await self._task


async def watcher(chat: ChatProcess, name: str, room: str = "p") -> Watcher:
    conn = await epws.connect(
        f"ws://127.0.0.1:{chat.port}/ws?room={room}&name={name}&presence=1",
        subprotocols=[PROTOCOL],
    )
    return Watcher(conn)


async def member(chat: ChatProcess, name: str, room: str = "p") -> epws.Conn:
    """A named JSON client that does not watch presence (it still counts)."""
    conn: epws.Conn = await epws.connect(
        f"ws://127.0.0.1:{chat.port}/ws?room={room}&name={name}", subprotocols=[PROTOCOL]
    )
    async with asyncio.timeout(5):
        assert json.loads(await conn.recv())["type"] == "hello"
    return conn


async def api_presence(ops_port: int, room: str = "p") -> dict[str, int]:
    status, _, body = await http(
        ops_port,
        f"GET /api/rooms/{room}/presence HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY}\n\n",
    )
    assert status == 200, body
    members: dict[str, int] = json.loads(body)["members"]
    return members


async def api_until(ops_port: int, want: dict[str, int], timeout: float = 2) -> None:
    """The API's view becomes ``want``: each process writes its changes at most every
    50 ms (presence.LINGER), so a read may briefly lag a change."""
    async with asyncio.timeout(timeout):
        while (members := await api_presence(ops_port)) != want:
            await asyncio.sleep(0.02)
    assert members == want


@contextlib.asynccontextmanager
async def chats(server: RedisServer, n: int) -> AsyncIterator[list[tuple[ChatProcess, int]]]:
    """``n`` chat processes on ``server``: (process, ops port) each."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            ops = free_port()
            chat = await stack.enter_async_context(
                chat_process(
                    "--addr", "127.0.0.1:0", "--broker", server.url,
                    "--presence-interval", str(INTERVAL), "--shutdown-timeout", "2",
                    "--ops-addr", f"127.0.0.1:{ops}", "--api-key", KEY,
                    loop_name=running_loop_name(),
                )
            )  # fmt: skip
            await chat.wait_for_line("redis broker: connected")
            out.append((chat, ops))
        yield out


async def test_members_on_every_process_are_seen_by_each(redis_server: RedisServer) -> None:
    async with chats(redis_server, 2) as [(one, ops1), (two, ops2)]:
        ann = await watcher(one, "ann")
        await ann.until(lambda m: m == {"ann": 1})
        bob = await watcher(two, "bob")
        # Each sees the other join, with the connection counts of every process.
        await bob.until(lambda m: m == {"ann": 1, "bob": 1})
        await ann.until(lambda m: m == {"ann": 1, "bob": 1})
        tab = await member(one, "bob")  # bob's second tab, on the other process
        await ann.until(lambda m: m == {"ann": 1, "bob": 2})
        await bob.until(lambda m: m == {"ann": 1, "bob": 2})
        for ops in (ops1, ops2):
            await api_until(ops, {"ann": 1, "bob": 2})
        assert await api_presence(ops1, "elsewhere") == {}
        await tab.close()
        await ann.until(lambda m: m == {"ann": 1, "bob": 1})
        await bob.close()
        await ann.until(lambda m: m == {"ann": 1})
        assert [(e["type"], e["name"], e["connections"]) for e in ann.events] == [
            ("join", "ann", 1),
            ("join", "bob", 1),
            ("join", "bob", 2),
            ("leave", "bob", 1),
            ("leave", "bob", 0),
        ]
        for ops in (ops1, ops2):
            await api_until(ops, {"ann": 1})
        await ann.close()


async def test_a_killed_process_stops_counting_within_three_intervals(
    redis_server: RedisServer,
) -> None:
    async with chats(redis_server, 3) as [(one, ops1), (two, _), (three, _)]:
        ann = await watcher(one, "ann")
        crashed = [await member(two, name) for name in ("carol", "dave")]
        closed = await member(three, "erin")
        await ann.until(lambda m: m == {"ann": 1, "carol": 1, "dave": 1, "erin": 1})
        loop = asyncio.get_running_loop()
        # A clean shutdown says goodbye: seen at once, well before any heartbeat lapses.
        started = loop.time()
        three.proc.send_signal(signal.SIGTERM)
        await ann.until(lambda m: "erin" not in m)
        assert loop.time() - started < INTERVAL
        # kill -9: no goodbye. Its members must go within 3 intervals of its last
        # heartbeat (the bound the docs state), never stay for good.
        started = loop.time()
        os.kill(two.proc.pid, signal.SIGKILL)
        await ann.until(lambda m: m == {"ann": 1}, timeout=10)
        elapsed = loop.time() - started
        assert elapsed <= 3 * INTERVAL + 0.5, elapsed  # 0.5 s: a loaded machine's slack
        await api_until(ops1, {"ann": 1})
        events = [(e["type"], e["name"], e["connections"]) for e in ann.events[-3:]]
        assert sorted(events) == [("leave", "carol", 0), ("leave", "dave", 0), ("leave", "erin", 0)]
        for conn in [*crashed, closed]:
            with contextlib.suppress(Exception):
                await conn.close()
        await ann.close()


async def test_a_burst_of_joins_costs_few_presence_frames(redis_server: RedisServer) -> None:
    n = 200
    async with chats(redis_server, 2) as [(one, _), (two, ops2)]:
        ann = await watcher(one, "ann")
        await ann.until(lambda m: m == {"ann": 1})
        frames = ann.frames
        conns = await asyncio.gather(
            *(
                epws.connect(
                    f"ws://127.0.0.1:{two.port}/ws?room=p&name=u{i}", subprotocols=[PROTOCOL]
                )
                for i in range(n)
            )
        )
        await ann.until(lambda m: len(m) == n + 1, timeout=15)
        joins = ann.frames - frames
        # The joins reached the other process in a handful of writes to Redis, and
        # each write in one frame: far fewer frames than joins.
        assert joins <= n // 10, joins
        await api_until(ops2, {"ann": 1, **{f"u{i}": 1 for i in range(n)}})
        await asyncio.gather(*(conn.close() for conn in conns))
        await ann.until(lambda m: m == {"ann": 1}, timeout=15)
        leaves = ann.frames - frames - joins
        assert leaves <= n // 10, leaves
        await ann.close()

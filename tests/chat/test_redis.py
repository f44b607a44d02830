"""Scale-out through a real Redis: several chat processes share rooms, order and history.

Every test starts its own ``redis-server`` (tests/chat/redis_server.py). Chat processes
are real ``epws-chat`` subprocesses where the process boundary is the point (two
processes, restarts, ``--workers``), and ``start_chat`` instances with separate
RedisBroker objects where the test needs to look inside (the broker's state).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from typing import Any

import pytest

import epws
from epws_chat.brokers import BrokerError
from epws_chat.brokers.redis import RedisBroker
from epws_chat.client import PROTOCOL
from epws_chat.server import start_chat

from .redis_server import RedisServer, redis_server
from .test_cli import EPWS_CHAT, ChatProcess, chat_process, running_loop_name

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


async def v1(port: int, room: str, **query: str) -> epws.Conn:
    """An ``epws.chat.v1`` client in ``room``, its hello line already read."""
    params = "&".join([f"room={room}", *(f"{k}={v}" for k, v in query.items())])
    conn: epws.Conn = await epws.connect(
        f"ws://127.0.0.1:{port}/ws?{params}", subprotocols=[PROTOCOL]
    )
    async with asyncio.timeout(5):
        hello = json.loads(await conn.recv())
    assert hello["type"] == "hello" and hello["room"] == room
    return conn


class Lines:
    """The lines a client receives (coalesced frames split on newlines)."""

    def __init__(self, conn: epws.Conn, *, speaks_json: bool = True) -> None:
        self.conn = conn
        self.speaks_json = speaks_json
        self.pending: list[Any] = []

    async def take(self, n: int, timeout: float = 10) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.pending) < n:
                frame = await self.conn.recv()
                assert isinstance(frame, str)
                for line in frame.split("\n"):
                    self.pending.append(json.loads(line) if self.speaks_json else line)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


async def take_messages(lines: Lines, n: int) -> list[dict[str, Any]]:
    got = await lines.take(n)
    assert all(m["type"] == "message" for m in got), got
    return got


@pytest.fixture
async def chats(redis_server: RedisServer):
    """``await chats(n, history=...)``: n chat processes (subprocesses) on one Redis."""
    stack: list[Any] = []

    async def start(n: int, *extra: str) -> list[ChatProcess]:
        procs = []
        for _ in range(n):
            cm = chat_process(
                "--addr",
                "127.0.0.1:0",
                "--broker",
                redis_server.url,
                *extra,
                loop_name=running_loop_name(),
            )
            procs.append(await cm.__aenter__())
            stack.append(cm)
        return procs

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


async def stop(chat: ChatProcess) -> None:
    chat.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await chat.proc.wait() == 0


async def test_two_processes_share_a_room_in_one_order_and_rooms_are_isolated(
    chats, redis_server: RedisServer
) -> None:
    a, b = await chats(2)
    assert a.port != b.port
    a1, a2, b1 = await v1(a.port, "dev"), await v1(a.port, "dev"), await v1(b.port, "dev")
    b2 = await epws.connect(f"ws://127.0.0.1:{b.port}/ws?room=dev")  # the seed's protocol
    other = await v1(b.port, "other")
    readers = [Lines(a1), Lines(a2), Lines(b1), Lines(b2, speaks_json=False)]

    async def send(conn: epws.Conn, tag: str) -> None:
        for i in range(15):
            await conn.send(json.dumps({"type": "message", "text": f"{tag}{i}"}))

    await asyncio.gather(send(a1, "a"), send(b1, "b"), b2.send("plain"))
    seen = [await take_messages(r, 31) for r in readers[:3]]
    plain = await readers[3].take(31)
    ids = [m["id"] for m in seen[0]]
    texts = [m["text"] for m in seen[0]]
    for got in seen[1:]:
        assert [m["id"] for m in got] == ids  # one order for every member, on both processes
    assert plain == texts
    assert sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) == ids  # id order
    assert [t for t in texts if t.startswith("a")] == [f"a{i}" for i in range(15)]
    assert [t for t in texts if t.startswith("b")] == [f"b{i}" for i in range(15)]
    assert {m["room"] for m in seen[0]} == {"dev"}

    # Rooms are isolated: a line in "other" reaches its member only, and the dev
    # members' next line is the one sent after it.
    other_sender = await v1(a.port, "other")
    await other_sender.send("only for other")
    (only,) = await take_messages(Lines(other), 1)
    assert only["text"] == "only for other" and only["room"] == "other"
    await a2.send("end")
    for r in readers[:3]:
        assert [m["text"] for m in await take_messages(r, 1)] == ["end"]
    assert await readers[3].take(1) == ["end"]
    for conn in (a1, a2, b1, b2, other, other_sender):
        await conn.close()


async def test_history_survives_a_restart_of_every_process(chats) -> None:
    a, b = await chats(2, "--history", "5")
    sender = await epws.connect(f"ws://127.0.0.1:{a.port}/ws?room=log")
    reader = Lines(sender, speaks_json=False)
    for i in range(7):
        await sender.send(f"line {i}")
    assert await reader.take(7) == [f"line {i}" for i in range(7)]
    await sender.close()
    await stop(a)
    await stop(b)

    c, d = await chats(2, "--history", "5")
    conn = await v1(d.port, "log")
    history = await take_messages(Lines(conn), 5)
    assert [m["text"] for m in history] == [f"line {i}" for i in range(2, 7)]
    # A page that reconnects asks for what followed the last id it saw.
    again = await v1(c.port, "log", after=history[2]["id"])
    assert [m["text"] for m in await take_messages(Lines(again), 2)] == ["line 5", "line 6"]
    await again.send("line 7")
    for lines in (Lines(conn), Lines(again)):
        assert [m["text"] for m in await take_messages(lines, 1)] == ["line 7"]
    await conn.close()
    await again.close()


async def test_killing_redis_mid_chat_errors_back_then_resumes(
    redis_server: RedisServer,
) -> None:
    brokers = [RedisBroker(redis_server.url, backoff=(0.05, 0.2)) for _ in range(2)]
    a = await start_chat(None, "127.0.0.1", 0, broker=brokers[0])
    b = await start_chat(None, "127.0.0.1", 0, broker=brokers[1])
    try:
        ja = await v1(a.port, "dev")
        pb = await epws.connect(f"ws://127.0.0.1:{b.port}/ws?room=dev")
        la, lb = Lines(ja), Lines(pb, speaks_json=False)
        await pb.send("before")
        assert [m["text"] for m in await take_messages(la, 1)] == ["before"]
        assert await lb.take(1) == ["before"]

        redis_server.kill()
        async with asyncio.timeout(5):
            while any(broker.connected for broker in brokers):
                await asyncio.sleep(0.01)  # the listeners notice the closed connection
        await pb.send("while down")
        await ja.send(json.dumps({"type": "message", "text": "json while down"}))
        (error,) = await lb.take(1)
        assert error.startswith("error: message not delivered: ") and "Redis" in error
        (jerror,) = await la.take(1)
        assert jerror["type"] == "error" and "message not delivered" in jerror["text"]

        redis_server.start()
        async with asyncio.timeout(10):
            for broker in brokers:
                await broker.wait_connected()
        # Redis came back empty (no persistence): the streams cannot prove that no
        # message was lost while the processes were away, so their members are told.
        (missed,) = await la.take(1)
        assert missed["type"] == "error" and missed["missed"] is True
        assert (await lb.take(1))[0].startswith("error: some messages may be missing")
        await ja.send("after")
        assert [m["text"] for m in await take_messages(la, 1)] == ["after"]
        assert await lb.take(1) == ["after"]  # "while down" never shows up
        await ja.close()
        await pb.close()
    finally:
        await a.close(timeout=2)
        await b.close(timeout=2)


async def test_a_process_that_lost_its_subscription_fills_the_gap_from_the_stream(
    redis_server: RedisServer,
) -> None:
    # A slow first reconnection attempt makes sure the line lands in the gap.
    brokers = [RedisBroker(redis_server.url, backoff=(0.6, 1.0)) for _ in range(2)]
    chats = [await start_chat(None, "127.0.0.1", 0, broker=br) for br in brokers]
    outsider = RedisBroker(redis_server.url)  # no members: never subscribed, never killed
    await outsider.start(lambda message: None)
    errors: list[BrokerError] = []
    try:
        conns = [await v1(chat.port, "dev") for chat in chats]
        readers = [Lines(conn) for conn in conns]
        await conns[0].send("first")
        for r in readers:
            assert [m["text"] for m in await take_messages(r, 1)] == ["first"]
        assert b"2" in redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        outsider.publish("dev", "outsider", "in the gap", errors.append)
        for r in readers:
            (got,) = await take_messages(r, 1)
            assert got["text"] == "in the gap" and got["name"] == "outsider"
        assert errors == []
        assert [broker.recovered for broker in brokers] == [1, 1]
        await conns[1].send("live again")
        for r in readers:
            assert [m["text"] for m in await take_messages(r, 1)] == ["live again"]
        for conn in conns:
            await conn.close()
    finally:
        await outsider.close()
        for chat in chats:
            await chat.close(timeout=2)


async def test_broker_history_is_the_stream_oldest_first(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, history=3)
    delivered: list[Any] = []
    await broker.start(delivered.append)
    try:
        broker.subscribe("r")
        errors: list[BrokerError] = []
        for i in range(5):
            broker.publish("r", "n", f"m{i}", errors.append)
        async with asyncio.timeout(5):
            while len(delivered) < 5:
                await asyncio.sleep(0.01)
        assert errors == [] and [m.text for m in delivered] == [f"m{i}" for i in range(5)]
        history = await broker.history("r", after=None, limit=10)
        assert history == delivered[2:]  # exactly 3 kept; same ids, times, names as live
        assert await broker.history("r", after=delivered[3].id, limit=10) == delivered[4:]
        assert await broker.history("r", after=None, limit=1) == delivered[4:]
        assert await broker.history("empty", after=None, limit=5) == []
    finally:
        await broker.close()


async def test_workers_share_one_port_and_a_dead_worker_is_restarted(
    redis_server: RedisServer,
) -> None:
    async with chat_process(
        "--addr",
        "127.0.0.1:0",
        "--broker",
        redis_server.url,
        "--workers",
        "2",
        "--shutdown-timeout",
        "2",
        loop_name=running_loop_name(),
    ) as chat:
        match = await chat.wait_for_line(r"with 2 workers \(pids (\d+), (\d+)\)")
        pids = {int(match.group(1)), int(match.group(2))}

        async def connect_many(n: int) -> dict[epws.Conn, int]:
            """n clients, each mapped to the pid of the worker that logged its accept."""
            out = {}
            for _ in range(n):
                conn = await epws.connect(f"ws://127.0.0.1:{chat.port}/ws")
                port = conn.local_address[1]
                line = await chat.wait_for_line(
                    rf"\[worker \d pid (\d+)\]: client 127\.0\.0\.1:{port} connected"
                )
                out[conn] = int(line.group(1))
            return out

        first = await connect_many(12)
        assert set(first.values()) == pids  # both workers took connections
        sender = next(iter(first))
        await sender.send("across workers")
        for conn in first:  # fan-out between the workers goes through Redis
            async with asyncio.timeout(5):
                assert await conn.recv() == "across workers"

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        await chat.wait_for_line(rf"worker \d \(pid {victim}\) exited with status -9")
        known = "|".join(str(p) for p in pids)
        ready = await chat.wait_for_line(rf"worker \d ready \(pid (?!(?:{known})\))(\d+)\)")
        replacement = int(ready.group(1))
        assert replacement not in pids
        survivors = {c: p for c, p in first.items() if p != victim}
        second = await connect_many(12)
        assert set(second.values()) == (pids - {victim}) | {replacement}
        await next(iter(second)).send("after the restart")
        for conn in [*survivors, *second]:
            async with asyncio.timeout(5):
                assert await conn.recv() == "after the restart"

        loop = asyncio.get_running_loop()
        started = loop.time()
        chat.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            for conn in [*survivors, *second]:
                with pytest.raises(epws.ConnectionClosedOK) as info:
                    await conn.recv()
                assert info.value.rcvd_code == 1001
            assert await chat.proc.wait() == 0
        assert loop.time() - started < 8
        await chat._reader
    assert "stopped" in chat.log


def test_workers_with_the_memory_broker_are_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EPWS_CHAT_BROKER"}
    done = subprocess.run(
        [str(EPWS_CHAT), "--addr", "127.0.0.1:0", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert "--workers 2 needs a shared broker" in done.stderr
    assert "--broker redis://" in done.stderr
    bad = subprocess.run(
        [str(EPWS_CHAT), "--broker", "mysql://x"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "want 'memory' or a Redis URL" in bad.stderr

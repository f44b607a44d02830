"""Build 4: ``kill -9`` of one of ``--workers 2``: its clients come back and resume
with no gap, the supervisor restarts the worker, the other worker never stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import epws
from epws_chat.client import PROTOCOL

from .redis_server import RedisServer, redis_server
from .test_cli import chat_process, running_loop_name
from .test_redis import Lines

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


async def join(port: int, after: str | None = None) -> tuple[epws.Conn, Lines, int]:
    """A JSON client in room "w": its connection, its lines, the pid that took it."""
    query = "room=w" + (f"&after={after}" if after else "")
    conn = await epws.connect(f"ws://127.0.0.1:{port}/ws?{query}", subprotocols=[PROTOCOL])
    lines = Lines(conn)
    (hello,) = await lines.take(1)
    assert hello["type"] == "hello"
    return conn, lines, conn.local_address[1]


async def test_a_killed_worker_is_restarted_and_its_clients_resume_without_a_gap(
    redis_server: RedisServer,
) -> None:
    async with chat_process(
        "--addr", "127.0.0.1:0", "--broker", redis_server.url, "--workers", "2",
        "--shutdown-timeout", "2", loop_name=running_loop_name(),
    ) as chat:  # fmt: skip
        match = await chat.wait_for_line(r"with 2 workers \(pids (\d+), (\d+)\)")
        pids = {int(match.group(1)), int(match.group(2))}
        clients: list[tuple[epws.Conn, Lines, int]] = []
        owner: dict[int, int] = {}
        for _ in range(12):
            conn, lines, port = await join(chat.port)
            line = await chat.wait_for_line(rf"pid (\d+)\]: client 127\.0\.0\.1:{port} connected")
            owner[port] = int(line.group(1))
            clients.append((conn, lines, port))
        assert set(owner.values()) == pids
        victim = min(pids)
        speaker = next(c for c in clients if owner[c[2]] != victim)
        await speaker[0].send("before the crash")
        last: dict[int, str] = {}
        for _, lines, port in clients:
            (m,) = await lines.take(1)
            assert m["text"] == "before the crash"
            last[port] = m["id"]

        os.kill(victim, signal.SIGKILL)
        orphans = [c for c in clients if owner[c[2]] == victim]
        for conn, _, _ in orphans:
            async with asyncio.timeout(5):
                await conn.wait_closed()
            assert conn.close_code == 1006  # no close frame: the process died
        # The other worker keeps serving; what is said now must reach the orphans
        # when they come back (as the page does: with the last id it showed).
        for i in range(3):
            await speaker[0].send(f"while away {i}")
        await chat.wait_for_line(rf"worker \d \(pid {victim}\) exited with status -9")
        back: list[list[Any]] = []
        for _, _, port in orphans:
            again, lines, _ = await join(chat.port, after=last[port])
            got = await lines.take(3)
            back.append(got)
            await again.send(json.dumps({"type": "message", "text": "I am back"}))
            await again.close()
        for got in back:
            assert [m["type"] for m in got] == ["message"] * 3  # no "missed" notice
            assert [m["text"] for m in got] == [f"while away {i}" for i in range(3)]
        known = "|".join(str(p) for p in pids)
        ready = await chat.wait_for_line(
            rf"worker \d ready \(pid (?!(?:{known})\))(\d+)\)", timeout=15
        )
        assert int(ready.group(1)) not in pids  # the parent restarted the worker
        for conn, _, _ in clients:
            if not conn.closed:
                await conn.close()

"""``--workers 2 --ops-addr``: one scrape and one API for the whole server.

Two real worker processes behind the supervisor, a real redis-server between them:
/metrics at the supervisor must count the connections of BOTH workers, and a
message posted through the API (to whichever worker) must reach clients of both.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families

import epws
from epws_chat.client import PROTOCOL

from .redis_server import RedisServer, free_port, redis_server
from .test_cli import chat_process, running_loop_name
from .test_http import http
from .test_redis import Lines

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

KEY = "fleet-key"


async def test_the_supervisor_scrapes_and_serves_the_api_for_every_worker(
    redis_server: RedisServer,
) -> None:
    ops_port = free_port()
    async with chat_process(
        "--addr", "127.0.0.1:0", "--broker", redis_server.url, "--workers", "2",
        "--ops-addr", f"127.0.0.1:{ops_port}", "--api-key", KEY,
        "--shutdown-timeout", "2", loop_name=running_loop_name(),
    ) as chat:  # fmt: skip
        match = await chat.wait_for_line(r"with 2 workers \(pids (\d+), (\d+)\)")
        pids = {int(match.group(1)), int(match.group(2))}
        clients: list[tuple[epws.Conn, Lines]] = []
        owners: set[int] = set()
        for _ in range(10):
            conn = await epws.connect(
                f"ws://127.0.0.1:{chat.port}/ws?room=f&name=n", subprotocols=[PROTOCOL]
            )
            lines = Lines(conn)
            await lines.take(1)
            port = conn.local_address[1]
            line = await chat.wait_for_line(rf"pid (\d+)\]: client 127\.0\.0\.1:{port} connected")
            owners.add(int(line.group(1)))
            clients.append((conn, lines))
        assert owners == pids  # both workers hold clients
        await asyncio.sleep(0.3)  # both workers subscribed to the room
        body = json.dumps({"text": "from the backend", "name": "api"})
        status, _, answer = await http(
            ops_port,
            f"POST /api/rooms/f/messages HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY}\n"
            f"Content-Type: application/json\nContent-Length: {len(body)}\n\n{body}",
        )
        assert status == 202, answer
        for _, lines in clients:
            (m,) = await lines.take(1)
            assert (m["name"], m["text"]) == ("api", "from the backend")
        status, _, raw = await http(ops_port, "GET /metrics HTTP/1.1\nHost: x\n\n")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(raw.decode())
            for s in family.samples
        }
        assert samples[("epws_chat_connections", ())] == 10
        assert samples[("epws_chat_handshakes_total", (("status", "101"),))] == 10
        assert samples[("epws_chat_messages_sent_total", ())] == 10
        status, _, raw = await http(
            ops_port, f"GET /api/stats HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY}\n\n"
        )
        stats = json.loads(raw)
        assert (status, stats["workers"], stats["connections"]) == (200, 2, 10)
        status, _, _ = await http(ops_port, "GET /api/stats HTTP/1.1\nHost: x\n\n")
        assert status == 401
        assert (await http(ops_port, "GET /readyz HTTP/1.1\nHost: x\n\n"))[0] == 200
        for conn, _ in clients:
            await conn.close()

"""The ops port: the server API, /metrics, /healthz, /readyz; and JSON logs.

Real server, real HTTP on loopback (the same raw client as the home handler's
tests), real WebSocket clients to see what the API publishes arrive.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import epws
from epws_chat.auth import TokenAuth
from epws_chat.brokers.redis import RedisBroker
from epws_chat.client import PROTOCOL, Settings
from epws_chat.server import Chat, start_chat

from .redis_server import RedisServer
from .test_http import http
from .test_rooms import json_lines, url

KEY = "api-key-for-tests"


def request(method: str, path: str, body: Any = None, key: str | None = KEY) -> str:
    data = "" if body is None else (body if isinstance(body, str) else json.dumps(body))
    head = f"{method} {path} HTTP/1.1\nHost: 127.0.0.1\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\n"
    if body is not None:
        head += f"Content-Type: application/json\nContent-Length: {len(data.encode())}\n"
    return head + "\n" + data


async def call(chat: Chat, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    status, _, raw = await http(chat.ops_port, request(method, path, body, **kw))
    return status, json.loads(raw) if raw.startswith(b"{") else raw.decode()


async def ops_chat(start: Any, settings: Settings | None = None, **kw: Any) -> Chat:
    chat: Chat = await start(settings, ops_addr=("127.0.0.1", 0), api_key=KEY, **kw)
    return chat


async def test_the_api_needs_its_key_and_is_off_without_one(start) -> None:
    chat = await ops_chat(start)
    for key in (None, "wrong", KEY + "x"):
        status, body = await call(chat, "GET", "/api/stats", key=key)
        assert status == 401
        assert "Bearer" in body["error"]
    off = await start(ops_addr=("127.0.0.1", 0))
    status, body = await call(off, "GET", "/api/stats")
    assert status == 404
    assert "--api-key" in body["error"]


async def test_a_message_posted_through_the_api_reaches_the_room(start) -> None:
    chat = await ops_chat(start)
    conn = await epws.connect(url(chat, room="ops/alerts", name="ann"), subprotocols=[PROTOCOL])
    await json_lines(conn, 1)  # hello
    await asyncio.sleep(0.05)  # the history (empty) is sent
    status, body = await call(
        chat, "POST", "/api/rooms/ops/alerts/messages", {"text": "disk\nfull", "name": "backend"}
    )
    assert (status, body) == (202, {"room": "ops/alerts", "status": "accepted"})
    (line,) = await json_lines(conn, 1)
    assert (line["name"], line["text"], line["room"]) == ("backend", "disk full", "ops/alerts")
    status, body = await call(chat, "GET", "/api/rooms/ops/alerts/history")
    assert status == 200
    assert [m["text"] for m in body["messages"]] == ["disk full"]
    first = body["messages"][0]["id"]
    await call(chat, "POST", "/api/rooms/ops/alerts/messages", {"text": "second"})
    status, body = await call(chat, "GET", f"/api/rooms/ops/alerts/history?after={first}")
    assert [m["text"] for m in body["messages"]] == ["second"]
    assert body["complete"] is True
    status, body = await call(chat, "GET", "/api/rooms/ops/alerts/presence")
    assert (status, body) == (200, {"room": "ops/alerts", "members": {"ann": 1}})
    await conn.close()


async def test_api_errors_have_clear_statuses(start) -> None:
    chat = await ops_chat(start)
    cases = [
        ("POST", "/api/rooms/dev/messages", "not json", 400),
        ("POST", "/api/rooms/dev/messages", {"name": "x"}, 400),
        ("POST", "/api/rooms/dev/messages", {"text": 5}, 400),
        ("POST", "/api/rooms/bad room/messages", {"text": "x"}, 400),
        ("GET", "/api/rooms/dev/messages", None, 405),
        ("POST", "/api/rooms/dev/history", {"text": "x"}, 405),
        ("GET", "/api/rooms/dev/history?after=nope", None, 400),
        ("GET", "/api/rooms/dev/history?limit=0", None, 400),
        ("GET", "/api/rooms/dev/other", None, 404),
        ("GET", "/api/nothing", None, 404),
        ("GET", "/elsewhere", None, 404),
    ]
    for method, path, body, want in cases:
        status, answer = await call(chat, method, path, body)
        assert status == want, (method, path, answer)
        assert answer["error"], answer
    status, _, _ = await http(
        chat.ops_port,
        "POST /api/rooms/dev/messages HTTP/1.1\nHost: x\n"
        f"Authorization: Bearer {KEY}\nContent-Length: 999999\n\n",
    )
    assert status == 413


async def test_metrics_count_what_happened(start) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    chat = await ops_chat(start, auth=TokenAuth.from_secret(secret))
    from epws_chat.auth import mint

    token = mint(secret, "m")
    conns = [
        await epws.connect(url(chat, room="dev", token=token), subprotocols=[PROTOCOL])
        for _ in range(3)
    ]
    for conn in conns:
        await json_lines(conn, 1)
    try:
        await epws.connect(url(chat, room="dev"))
    except epws.HandshakeError as exc:
        assert exc.status == 401
    await asyncio.sleep(0.05)
    for i in range(5):
        await conns[0].send(f"m{i}")
    for conn in conns:
        await json_lines(conn, 5)
    status, _, raw = await http(chat.ops_port, "GET /metrics HTTP/1.1\nHost: x\n\n")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }
    assert samples[("epws_chat_connections", ())] == 3
    assert samples[("epws_chat_handshakes_total", (("status", "101"),))] == 3
    assert samples[("epws_chat_handshakes_total", (("status", "401"),))] == 1
    assert samples[("epws_chat_messages_received_total", ())] == 5
    assert samples[("epws_chat_received_bytes_total", ())] == 10
    assert samples[("epws_chat_messages_sent_total", ())] == 15
    frames = samples[("epws_chat_frames_sent_total", ())]
    assert 3 <= frames <= 15  # batched: at most one frame per line and recipient
    status, stats = await call(chat, "GET", "/api/stats")
    assert stats["connections"] == 3
    assert stats["messages_out"] == 15
    for conn in conns:
        await conn.close()


async def test_handshakes_the_library_refuses_are_counted(start) -> None:
    """Refused by epws itself, before the chat's handler: before Upgrader.on_refusal
    these never reached the handshake metrics (only 101 and the chat's own refusals)."""
    chat = await ops_chat(start)
    port = chat.port
    upgrade = (
        "GET /ws HTTP/1.1\nHost: 127.0.0.1:{port}\nUpgrade: websocket\nConnection: Upgrade\n"
        "Sec-WebSocket-Version: 13\nSec-WebSocket-Key: {key}\n{extra}\n"
    )
    good_key = "dGhlIHNhbXBsZSBub25jZQ=="
    for request_text, status in (
        ("GET /ws HTTP/1.1\nHost: 127.0.0.1\n\n", 426),  # not an upgrade
        (upgrade.format(port=port, key="dG9vIHNob3J0", extra=""), 400),  # bad key
        (upgrade.format(port=port, key=good_key, extra="Origin: https://evil.example\n"), 403),
        ("NOT HTTP AT ALL\n\n", 400),  # malformed
    ):
        got, _, _ = await http(port, request_text)
        assert got == status
    status, stats = await call(chat, "GET", "/api/stats")
    assert stats["handshakes"] == {"400": 2, "403": 1, "426": 1}


async def test_metrics_off_counts_nothing(start) -> None:
    chat = await ops_chat(start, metrics=False)
    assert chat.hub.stats is None
    status, _ = await call(chat, "GET", "/metrics")
    assert status == 404


async def test_health_and_readiness_on_both_ports(start) -> None:
    chat = await ops_chat(start)
    for port in (chat.port, chat.ops_port):
        assert (await http(port, "GET /healthz HTTP/1.1\nHost: x\n\n"))[0] == 200
        assert (await http(port, "GET /readyz HTTP/1.1\nHost: x\n\n"))[0] == 200
    chat.closing = True  # what close() sets first: readiness fails before the drain
    status, _, body = await http(chat.port, "GET /readyz HTTP/1.1\nHost: x\n\n")
    assert (status, body) == (503, b"shutting down\n")
    chat.closing = False


async def test_the_rate_limit_and_evictions_are_counted(start) -> None:
    chat = await ops_chat(start, Settings(rate=1.0, burst=1, abuse_limit=3))
    conn = await epws.connect(url(chat), subprotocols=[PROTOCOL])
    await json_lines(conn, 1)
    for i in range(10):
        try:
            await conn.send(f"flood {i}")
        except epws.ConnectionClosed:
            break
    async with asyncio.timeout(5):
        while chat.hub.clients:
            await asyncio.sleep(0.01)
    assert chat.stats is not None
    assert chat.stats.rate_limited >= 4
    assert chat.stats.evictions == {"flood": 1}


async def test_json_logs_carry_the_connection_id() -> None:
    from .test_cli import chat_process

    async with chat_process("--addr", "127.0.0.1:0", "--log-format", "json") as proc:
        conns = [
            await epws.connect(f"ws://127.0.0.1:{proc.port}/ws?name=j", subprotocols=[PROTOCOL])
            for _ in range(2)
        ]
        for conn in conns:
            await conn.close()
        async with asyncio.timeout(5):
            while proc.log.count("disconnected") < 2:
                await asyncio.sleep(0.02)
    lines = [json.loads(line) for line in proc.log.splitlines() if line.strip()]
    about = [line for line in lines if "connected" in line["message"]]
    assert len(about) == 4, about  # connected, disconnected: twice
    assert all(isinstance(line["conn"], int) for line in about)
    assert len({line["conn"] for line in about}) == 2
    assert {line["level"] for line in lines} <= {"INFO", "WARNING"}


def scrape(raw: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }


async def test_broker_publish_latency_and_reconnects_are_counted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    broker = RedisBroker(server.url, timeout=1.0, backoff=(0.05, 0.2), health_interval=1.0)
    chat = await start_chat(None, "127.0.0.1", 0, broker=broker, ops_addr=("127.0.0.1", 0))
    try:
        await broker.wait_connected()
        conn = await epws.connect(url(chat, room="dev", name="m"), subprotocols=[PROTOCOL])
        await json_lines(conn, 1)
        await asyncio.sleep(0.05)
        for i in range(5):
            await conn.send(f"m{i}")
        await json_lines(conn, 5)
        _, _, raw = await http(chat.ops_port, "GET /metrics HTTP/1.1\nHost: x\n\n")
        samples = scrape(raw)
        # Before: defined but never fed (count 0, sum 0, reconnects 0 after an outage).
        assert samples[("epws_chat_broker_publish_seconds_count", ())] == 5
        assert samples[("epws_chat_broker_publish_seconds_bucket", (("le", "+Inf"),))] == 5
        assert 0 < samples[("epws_chat_broker_publish_seconds_sum", ())] < 5
        assert samples[("epws_chat_broker_reconnects_total", ())] == 0
        server.kill()
        async with asyncio.timeout(10):
            while broker.connected:
                await asyncio.sleep(0.02)
        server.start()
        async with asyncio.timeout(10):
            await broker.wait_connected()
        _, _, raw = await http(chat.ops_port, "GET /metrics HTTP/1.1\nHost: x\n\n")
        assert scrape(raw)[("epws_chat_broker_reconnects_total", ())] == 1
        await conn.close()
    finally:
        await chat.close(timeout=2)
        server.stop()

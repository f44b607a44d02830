"""The hub's semantics, on real server-side connections (the pumps are not running)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from epws_chat.client import Client, Settings, normalize
from epws_chat.hub import Hub


async def test_broadcast_reaches_every_client_sender_included(conn_pairs) -> None:
    hub = Hub()
    a, b, c = (Client(hub, conn) for conn, _ in await conn_pairs(3))
    for client in (a, b, c):
        hub.register(client)
    assert len(hub) == 3
    hub.broadcast("one")
    hub.broadcast("two")
    for client in (a, b, c):
        assert list(client._pending) == ["one", "two"]


async def test_unregister_removes_and_closes_the_send_buffer(conn_pairs) -> None:
    hub = Hub()
    a, b = (Client(hub, conn) for conn, _ in await conn_pairs(2))
    hub.register(a)
    hub.register(b)
    hub.unregister(a)
    assert a not in hub and b in hub
    assert a.send_closed and not b.send_closed
    hub.broadcast("after")
    assert a.pending == 0 and b.pending == 1


async def test_unregister_of_a_removed_client_is_a_no_op(conn_pairs) -> None:
    hub = Hub()
    ((conn, _),) = await conn_pairs(1)
    a = Client(hub, conn)
    hub.register(a)
    hub.unregister(a)
    hub.unregister(a)  # the read pump's unregister after the hub already removed it
    assert len(hub) == 0
    # Never registered at all: also nothing.
    stranger = Client(hub, conn)
    hub.unregister(stranger)
    assert not stranger.send_closed


async def test_full_send_buffer_evicts_at_once_without_touching_others(
    conn_pairs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epws_chat")
    hub = Hub()
    (slow_conn, _), (fast_conn, _) = await conn_pairs(2)
    slow = Client(hub, slow_conn, Settings(send_buffer=3))
    fast = Client(hub, fast_conn, Settings(send_buffer=10))
    hub.register(slow)
    hub.register(fast)
    for i in range(3):
        hub.broadcast(f"m{i}")
    assert slow in hub and slow.pending == 3 and not slow.send_closed
    # Stand-in for a write pump stuck in a write the peer does not take (the real
    # thing is in test_chat.py): now a full buffer means the client is stuck.
    slow._blocked = True
    hub.broadcast("m3")  # slow's buffer is full: evicted during this very call
    assert slow not in hub
    assert slow.send_closed
    assert slow.pending == 3  # what was queued is still sent before the close frame
    assert list(fast._pending) == ["m0", "m1", "m2", "m3"]
    hub.broadcast("m4")
    assert slow.pending == 3 and fast.pending == 5
    hub.unregister(slow)  # no-op: not closed twice, nothing raised
    assert fast in hub and len(hub) == 1
    assert any("evicted" in r.getMessage() for r in caplog.records)


async def test_full_buffer_of_a_pump_that_has_not_run_yet_is_flushed_not_evicted(
    conn_pairs,
) -> None:
    # One read pump can broadcast many messages before the write pumps get a turn;
    # that alone must not evict anybody: the queued batch goes out right away.
    hub = Hub()
    ((server_side, client_side),) = await conn_pairs(1)
    a = Client(hub, server_side, Settings(send_buffer=3))
    hub.register(a)
    for i in range(4):
        hub.broadcast(f"m{i}")
    assert a in hub and not a.send_closed
    assert list(a._pending) == ["m3"]
    async with asyncio.timeout(5):
        assert await client_side.recv() == "m0\nm1\nm2"


async def test_enqueue_wakes_the_write_pump_once_per_burst(conn_pairs) -> None:
    hub = Hub()
    ((conn, _),) = await conn_pairs(1)
    a = Client(hub, conn)
    hub.register(a)
    waiter = a._waiter = conn.loop.create_future()
    hub.broadcast("x")
    assert waiter.done() and a._waiter is None
    hub.broadcast("y")  # the pump has not run yet: no second wake-up needed
    assert a.pending == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hello", "hello"),
        ("  padded \t", "padded"),
        ("two\nlines", "two lines"),
        ("\n\nedge\n", "edge"),
        ("   \n\t ", ""),
        ("\u00a0nbsp\u3000", "nbsp"),
        # Go's TrimSpace keeps the information separators that str.strip() drops.
        ("\x1cx\x1f", "\x1cx\x1f"),
        ("a\r\nb", "a\r b"),
    ],
)
def test_normalize_like_the_go_read_pump(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_settings_validate_the_constants() -> None:
    assert Settings() == Settings(256, 512, 60.0, 54.0, 10.0)
    with pytest.raises(ValueError):
        Settings(pong_wait=10, ping_period=10)
    with pytest.raises(ValueError):
        Settings(send_buffer=0)

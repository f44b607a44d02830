"""The hub's semantics, on real server-side connections (no chat server, no read pump).

Each client here is a :class:`Client` around the server side of a real connection;
the hub writes to it as it does in the chat. What the peer receives is the evidence.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import epws
from epws_chat.client import Client, Settings, normalize
from epws_chat.hub import DEFAULT_ROOM, Hub

from .rawws import CLOSE, TEXT


async def started_hub(**kw: object) -> Hub:
    hub = Hub(**kw)  # type: ignore[arg-type]
    await hub.start()
    return hub


def client(hub: Hub, conn: epws.Conn, room: str = DEFAULT_ROOM) -> Client:
    return Client(hub, conn, Settings(), room=room)


async def recv(conn: epws.Conn) -> str | bytes:
    async with asyncio.timeout(5):
        return await conn.recv()


async def test_broadcast_reaches_every_client_sender_included(conn_pairs) -> None:
    hub = await started_hub()
    pairs = await conn_pairs(3)
    a, b, c = (client(hub, conn) for conn, _ in pairs)
    for member in (a, b, c):
        hub.register(member)
    assert len(hub) == 3 and all(m in hub for m in (a, b, c))
    hub.broadcast("one", sender=a)
    hub.broadcast("two", sender=b)
    # Both were broadcast in one loop iteration: one flush, one message, both lines.
    for _, peer in pairs:
        assert await recv(peer) == "one\ntwo"
    # The next iteration's broadcast is a message of its own.
    hub.broadcast("three", sender=c)
    for _, peer in pairs:
        assert await recv(peer) == "three"


async def test_a_burst_within_one_iteration_is_one_message_per_room(conn_pairs) -> None:
    hub = await started_hub()
    pairs = await conn_pairs(3)
    a, b = client(hub, pairs[0][0], "x"), client(hub, pairs[1][0], "x")
    c = client(hub, pairs[2][0], "y")
    for member in (a, b, c):
        hub.register(member)
    lines = [f"line {i}" for i in range(200)]
    for i, line in enumerate(lines):
        hub.broadcast(line, room="x" if i % 2 == 0 else "y")
    hub.broadcast("nobody is here", room="z")  # a room without members: dropped
    x_lines, y_lines = lines[0::2], lines[1::2]
    assert await recv(pairs[0][1]) == "\n".join(x_lines)
    assert await recv(pairs[1][1]) == "\n".join(x_lines)
    assert await recv(pairs[2][1]) == "\n".join(y_lines)
    assert "z" not in hub.rooms


async def test_unregister_removes_the_client_and_empties_its_room(conn_pairs) -> None:
    hub = await started_hub()
    (conn_a, peer_a), (conn_b, peer_b) = await conn_pairs(2)
    a, b = client(hub, conn_a), client(hub, conn_b)
    hub.register(a)
    hub.register(b)
    hub.unregister(a)
    assert a not in hub and b in hub and len(hub) == 1
    hub.broadcast("after")
    assert await recv(peer_b) == "after"
    # Had a still been a member, "after" would be ahead of this in its stream.
    await conn_a.send("marker")
    assert await recv(peer_a) == "marker"
    assert not conn_a.closed  # unregister leaves the closing to the connection's owner
    hub.unregister(b)
    assert len(hub) == 0 and DEFAULT_ROOM not in hub.rooms


async def test_unregister_of_an_evicted_client_is_a_no_op(conn_pairs) -> None:
    hub = await started_hub()
    (conn_a, peer_a), (conn_b, peer_b) = await conn_pairs(2)
    a, b = client(hub, conn_a), client(hub, conn_b)
    hub.register(a)
    hub.register(b)
    hub.evict(a)
    assert a not in hub and b in hub
    # The evicted client gets a close frame with an EMPTY payload: the peer sees 1005.
    with pytest.raises(epws.ConnectionClosed) as info:
        await recv(peer_a)
    assert info.value.rcvd_code == 1005
    hub.unregister(a)  # its on_close: nothing to do, nothing raised
    hub.evict(a)  # and no second close either
    hub.unregister(a)
    assert len(hub) == 1 and list(hub.rooms[DEFAULT_ROOM].members) == [b]
    # A client that was never registered: also nothing.
    stranger = client(hub, conn_b)
    hub.unregister(stranger)
    assert len(hub) == 1
    hub.broadcast("still here")
    assert await recv(peer_b) == "still here"


async def fill_until_backlogged(hub: Hub, stuck: Client, peer: epws.Conn) -> list[str]:
    """Broadcast 2 kB lines until ``stuck``'s outgoing buffer holds data; ``peer``
    (a reading member) receives each one, which also lets the flush run."""
    sent: list[str] = []
    for i in range(300):
        if stuck.conn.buffered_amount:
            return sent
        line = f"{i:04d} " + "b" * 2000
        hub.broadcast(line)
        sent.append(line)
        assert await recv(peer) == line
    raise AssertionError("the stuck client's buffer never filled")


async def test_a_full_send_buffer_evicts_at_once_without_touching_others(
    conn_pairs, stuck_pairs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epws_chat")
    limit = 30_000
    hub = await started_hub(send_limit=limit, write_wait=60.0)
    ((stuck_conn, raw),) = await stuck_pairs(1)
    ((fast_conn, peer),) = await conn_pairs(1)
    stuck, fast = client(hub, stuck_conn), client(hub, fast_conn)
    hub.register(stuck)
    hub.register(fast)
    sent: list[str] = []
    backlog: list[int] = []  # the stuck buffer after each batch, while a member
    for i in range(200):
        line = f"{i:04d} " + "s" * 2000
        hub.broadcast(line)
        sent.append(line)
        assert await recv(peer) == line  # the fast member gets every line at once
        if stuck not in hub:
            break
        backlog.append(stuck_conn.buffered_amount)
    else:
        raise AssertionError(f"never evicted; buffered: {backlog[-5:]}")
    # Evicted at the first batch that found more than the limit waiting, not before.
    assert backlog[-1] > limit
    assert all(amount <= limit for amount in backlog[:-1])
    assert fast in hub and len(hub) == 1
    assert any("evicted" in r.getMessage() for r in caplog.records)
    hub.unregister(stuck)  # its on_close after the eviction: a no-op
    hub.broadcast("after")
    assert await recv(peer) == "after"
    # TCP went with the eviction (a reset frees the kernel's send queue at once): the
    # empty close frame sat behind the backlog. What had reached the client is a prefix.
    assert stuck_conn.closed
    async with asyncio.timeout(10):
        frames = await raw.read_until_eof()
    assert all(f.opcode in (TEXT, CLOSE) for f in frames)
    got = [f.payload.decode() for f in frames if f.opcode == TEXT]
    assert got == sent[: len(got)] and len(got) < len(sent)


async def test_a_backlog_older_than_write_wait_evicts_however_small(
    conn_pairs, stuck_pairs
) -> None:
    # Go's write deadline: a buffer that has not once been empty for write_wait
    # seconds belongs to a stuck client, even far below the byte limit.
    hub = await started_hub(send_limit=10**9, write_wait=0.3)
    ((stuck_conn, _),) = await stuck_pairs(1)
    ((fast_conn, peer),) = await conn_pairs(1)
    stuck, fast = client(hub, stuck_conn), client(hub, fast_conn)
    hub.register(stuck)
    hub.register(fast)
    await fill_until_backlogged(hub, stuck, peer)
    loop = asyncio.get_running_loop()
    hub.broadcast("seen with a backlog")  # this batch starts the backlog's clock
    assert await recv(peer) == "seen with a backlog"
    started = loop.time()
    hub.broadcast("young backlog")
    assert await recv(peer) == "young backlog"
    assert stuck in hub  # under write_wait: still a member
    await asyncio.sleep(0.35)  # waiting for time itself to pass the write wait
    assert stuck in hub  # only a batch checks the clock
    hub.broadcast("old backlog")
    assert await recv(peer) == "old backlog"
    assert stuck not in hub and fast in hub
    assert loop.time() - started >= 0.3


async def test_a_backlog_that_drains_restarts_the_clock(conn_pairs) -> None:
    # A reading client with a momentary backlog is not stuck: an empty buffer at a
    # batch resets the write-wait clock.
    hub = await started_hub(send_limit=10**9, write_wait=0.2)
    ((conn, peer),) = await conn_pairs(1)
    member = client(hub, conn)
    hub.register(member)
    member.backlog_since = asyncio.get_running_loop().time() - 10  # stale
    hub.broadcast("x")
    assert await recv(peer) == "x"
    assert member in hub and member.backlog_since is None


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
    with pytest.raises(ValueError):
        Settings(history=-1)
    assert Settings().history == 100
    assert Settings(send_buffer=3, read_limit=10).send_limit == 30

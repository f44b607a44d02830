"""The chat over real sockets: broadcast, coalescing, eviction, limits, keepalive."""

from __future__ import annotations

import asyncio
import logging

import pytest

import epws
from epws_chat.client import Client, Settings
from epws_chat.server import Chat

from .conftest import small_send_buffer_listener, ws_url
from .rawws import CLOSE, PING, PONG, TEXT, RawClient, client_frame


async def collect_lines(conn: epws.Conn, count: int) -> tuple[list[str], int]:
    """Read until ``count`` lines arrived; return them and how many messages carried them."""
    lines: list[str] = []
    messages = 0
    while len(lines) < count:
        data = await conn.recv()
        assert isinstance(data, str)
        messages += 1
        lines.extend(data.split("\n"))
    return lines, messages


def find_client(chat: Chat, raw: RawClient) -> Client:
    """The server's Client for a raw client's connection."""
    for client in chat.hub.clients:
        if client.conn.remote_address[1] == raw.local_port:
            return client
    raise AssertionError("raw client is not registered")


async def test_two_clients_see_each_others_messages_in_order(start) -> None:
    chat = await start()
    async with epws.connect(ws_url(chat)) as a, epws.connect(ws_url(chat)) as b:
        async with asyncio.timeout(5):
            for i in range(5):
                await a.send(f"a{i}")
                await b.send(f"b{i}")
            got_a, _ = await collect_lines(a, 10)
            got_b, _ = await collect_lines(b, 10)
    # Everyone sees the same order, the sender included, and each sender's lines in order.
    assert got_a == got_b
    assert [x for x in got_a if x[0] == "a"] == [f"a{i}" for i in range(5)]
    assert [x for x in got_a if x[0] == "b"] == [f"b{i}" for i in range(5)]


async def test_messages_are_normalized_and_empty_ones_still_broadcast(start) -> None:
    chat = await start()
    async with epws.connect(ws_url(chat)) as a, epws.connect(ws_url(chat)) as b:
        async with asyncio.timeout(5):
            await a.send("  multi\nline  ")
            assert await b.recv() == "multi line"
            await a.send(" \n\t ")
            assert await b.recv() == ""
            await a.send(b"bin\xffary")  # binary: its bytes go out as (valid) text
            assert await b.recv() == "bin\ufffdary"


async def test_a_burst_is_coalesced_into_fewer_messages(start) -> None:
    chat = await start(Settings(rate=0))  # a burst over the default rate limit
    async with epws.connect(ws_url(chat)) as reader:
        sender = await RawClient.connect(chat.port)
        try:
            n = 100
            lines = [f"line {i}" for i in range(n)]
            # All frames in one write: the server reads them in one go, so they queue
            # up behind one wake-up of each write pump.
            await sender.send_frames([client_frame(TEXT, x.encode()) for x in lines])
            async with asyncio.timeout(5):
                got, messages = await collect_lines(reader, n)
        finally:
            sender.close()
    assert got == lines
    assert messages < n
    assert messages == 1  # one wake-up, one snapshot, one message


async def test_message_over_the_read_limit_closes_with_1009(start) -> None:
    chat = await start()
    async with epws.connect(ws_url(chat)) as conn:
        async with asyncio.timeout(5):
            await conn.send("x" * 512)  # at the limit: fine
            assert await conn.recv() == "x" * 512
            await conn.send("x" * 513)
            with pytest.raises(epws.ConnectionClosed) as info:
                await conn.recv()
    assert info.value.rcvd_code == 1009


async def test_read_limit_flag_is_honoured(start) -> None:
    chat = await start(Settings(read_limit=16))
    async with epws.connect(ws_url(chat)) as conn:
        async with asyncio.timeout(5):
            await conn.send("y" * 17)
            with pytest.raises(epws.ConnectionClosed) as info:
                await conn.recv()
    assert info.value.rcvd_code == 1009


async def test_cross_origin_upgrade_gets_403(start) -> None:
    chat = await start()
    with pytest.raises(epws.HandshakeError) as info:
        await epws.connect(ws_url(chat), origin="http://evil.example")
    assert info.value.status == 403
    # The same origin, as a browser on the chat's own page sends it, is accepted.
    async with epws.connect(ws_url(chat), origin=f"http://127.0.0.1:{chat.port}") as conn:
        await conn.send("ok")
        async with asyncio.timeout(5):
            assert await conn.recv() == "ok"


async def test_a_client_that_never_reads_is_evicted_while_others_get_everything(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epws_chat")
    chat = await start(Settings(write_wait=5.0, rate=0), sock=small_send_buffer_listener())
    stuck = await RawClient.connect(chat.port, rcvbuf=4096)
    try:
        stuck_client = find_client(chat, stuck)
        async with (
            epws.connect(ws_url(chat)) as sender,
            epws.connect(ws_url(chat)) as watcher,
        ):
            rounds, per_round = 12, 150
            n = rounds * per_round
            payload = "z" * 380
            lines = [f"{i:05d} {payload}" for i in range(n)]
            own: list[str] = []
            seen: list[str] = []
            async with asyncio.timeout(20):
                # In rounds, so the loop turns between them: the stuck client's write
                # pump blocks on its full socket and its buffer then fills up.
                for r in range(rounds):
                    for line in lines[r * per_round : (r + 1) * per_round]:
                        await sender.send(line)
                    own += (await collect_lines(sender, per_round))[0]  # the sender reads too
                    seen += (await collect_lines(watcher, per_round))[0]
            assert own == lines
            assert seen == lines
            # The stuck client was dropped from the hub while the others were served.
            assert stuck_client not in chat.hub
            assert any("evicted" in r.getMessage() for r in caplog.records)

            # The server dropped TCP right after its (empty) close frame, which sat
            # behind the backlog: the kernel's send queue was freed at once (a reset).
            assert stuck_client.conn.closed
            # Whatever it can still read (Linux may discard its receive queue on the
            # reset) is a prefix of the room's lines, in order.
            async with asyncio.timeout(10):
                frames = await stuck.read_until_eof()
    finally:
        stuck.close()
    assert all(f.opcode in (TEXT, CLOSE) for f in frames)
    data = [f for f in frames if f.opcode == TEXT]
    got = [line for f in data for line in f.payload.decode().split("\n")]
    assert got == lines[: len(got)]  # a prefix, in order, nothing after the eviction
    assert len(got) < n


async def test_write_deadline_drops_a_client_that_does_not_read(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    # A buffer too big to fill: only the write wait can end this client. As in the
    # hub, the age of its backlog is checked when a batch is written, so the chat
    # keeps going (one line every 50 ms) while the stuck client falls behind.
    caplog.set_level(logging.INFO, logger="epws_chat")
    settings = Settings(send_buffer=100_000, write_wait=0.5, rate=0)
    chat = await start(settings, sock=small_send_buffer_listener())
    stuck = await RawClient.connect(chat.port, rcvbuf=4096)
    try:
        stuck_client = find_client(chat, stuck)
        async with epws.connect(ws_url(chat)) as sender:
            loop = asyncio.get_running_loop()
            line = "w" * 400
            async with asyncio.timeout(10):
                for _ in range(400):  # ~160 kB: well over what the socket buffers hold
                    await sender.send(line)
                await collect_lines(sender, 400)
                assert stuck_client.conn.buffered_amount > 0
                assert stuck_client.conn.buffered_amount < settings.send_limit
                started = loop.time()
                for i in range(100):
                    if stuck_client not in chat.hub:
                        break
                    await sender.send(f"tick {i}")
                    await collect_lines(sender, 1)
                    await asyncio.sleep(0.05)  # pacing a chat, not waiting for an event
                await stuck_client.conn.wait_closed()
        elapsed = loop.time() - started
        assert stuck_client not in chat.hub
        assert elapsed < 2  # write_wait (0.5 s) after the backlog began, and a tick
        assert any("evicted" in r.getMessage() for r in caplog.records)
    finally:
        stuck.close()


async def test_write_wait_drops_a_stuck_client_in_a_room_that_fell_silent(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    # One burst, then silence: no batch is written after it, so only the keepalive
    # sweep can notice that the stuck client's backlog is older than write_wait.
    caplog.set_level(logging.INFO, logger="epws_chat")
    settings = Settings(send_buffer=100_000, write_wait=0.5, rate=0)
    chat = await start(settings, sock=small_send_buffer_listener())
    stuck = await RawClient.connect(chat.port, rcvbuf=4096)
    try:
        stuck_client = find_client(chat, stuck)
        async with epws.connect(ws_url(chat)) as sender:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                for _ in range(400):  # ~160 kB: well over what the socket buffers hold
                    await sender.send("s" * 400)
                await collect_lines(sender, 400)
                assert 0 < stuck_client.conn.buffered_amount < settings.send_limit
                started = loop.time()
                await stuck_client.conn.wait_closed()  # nothing else is said in the room
        elapsed = loop.time() - started
        assert stuck_client not in chat.hub
        assert elapsed < 2  # write_wait (0.5 s) and one sweep (every write_wait / 2)
        assert any("nothing sent for" in r.getMessage() for r in caplog.records)
    finally:
        stuck.close()


async def test_pings_go_out_on_the_ping_period(start) -> None:
    chat = await start(Settings(pong_wait=0.5, ping_period=0.1))
    raw = await RawClient.connect(chat.port)
    try:
        pings = 0
        async with asyncio.timeout(5):
            while pings < 3:
                frame = await raw.read_frame()
                assert frame.opcode == PING
                assert frame.payload == b""  # chat-spec: pings are empty
                pings += 1
                await raw.send_frames([client_frame(PONG, frame.payload)])
    finally:
        raw.close()


async def test_the_keepalive_is_the_librarys_with_the_seed_timings(start) -> None:
    # No ping loop of the chat's own (no task at all once started): epws pings, with
    # chat-spec's timings (a ping every ping_period, dropped pong_wait after the last
    # answered ping) and its empty payload.
    before = asyncio.all_tasks()
    chat = await start(Settings())
    assert asyncio.all_tasks() - before == set()
    upgrader = chat.server.upgrader
    assert (upgrader.ping_interval, upgrader.ping_timeout, upgrader.ping_payload) == (
        54.0,
        6.0,
        b"",
    )


async def test_only_pongs_extend_the_read_deadline(start, caplog: pytest.LogCaptureFixture) -> None:
    # A client that keeps chatting but never answers pings is dropped after pong_wait.
    caplog.set_level(logging.INFO, logger="epws_chat")
    chat = await start(Settings(pong_wait=0.6, ping_period=0.2, write_wait=0.5))
    raw = await RawClient.connect(chat.port)
    try:
        client = find_client(chat, raw)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def chatter() -> None:
            for i in range(100):
                await raw.send_text(f"still here {i}")
                await asyncio.sleep(0.05)  # pacing a chatty user, not waiting for an event

        talking = asyncio.ensure_future(chatter())
        try:
            async with asyncio.timeout(5):
                await client.conn.wait_closed()
        finally:
            talking.cancel()
        elapsed = loop.time() - started
        # pong_wait, then up to write_wait for the (unanswered) closing handshake
        assert 0.55 < elapsed < 3
        assert any(
            f"{client} disconnected (read deadline exceeded)" in r.getMessage()
            for r in caplog.records
        )
        assert client not in chat.hub
    finally:
        raw.close()


async def test_a_client_answering_pings_outlives_the_pong_wait(start) -> None:
    chat = await start(Settings(pong_wait=0.4, ping_period=0.1))
    async with epws.connect(ws_url(chat)) as conn:  # epws answers pings by itself
        server_side = next(iter(chat.hub.clients))
        enough = asyncio.get_running_loop().create_future()
        pings = 0

        def on_ping(_: bytes) -> None:
            nonlocal pings
            pings += 1
            if pings == 12 and not enough.done():  # 1.2 s idle: three pong waits
                enough.set_result(None)

        conn.ping_handler = on_ping
        async with asyncio.timeout(5):
            await enough
            await conn.send("alive")
            assert await conn.recv() == "alive"
        assert server_side in chat.hub


async def test_logs_open_close_with_code_and_unexpected_closes(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epws_chat")
    chat = await start()
    for code in (1001, 4000):
        conn = await epws.connect(ws_url(chat))
        name = f"127.0.0.1:{conn.local_address[1]}"
        await conn.send("hi")
        async with asyncio.timeout(5):
            assert await conn.recv() == "hi"
        await conn.close(code)
        # The server's handler logs "disconnected" as it returns; wait for that.
        async with asyncio.timeout(5):
            while not any(f"{name} disconnected" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)
        text = "\n".join(r.getMessage() for r in caplog.records if name in r.getMessage())
        assert f"client {name} connected" in text
        assert f"client {name} disconnected (close code {code})" in text
        unexpected = [
            r for r in caplog.records if name in r.getMessage() and "closed the" in r.getMessage()
        ]
        if code == 1001:
            assert not unexpected  # going away is expected: not logged
        else:
            assert len(unexpected) == 1 and unexpected[0].levelno == logging.WARNING


async def test_shutdown_sends_1001_to_every_client(start) -> None:
    chat = await start()
    a = await epws.connect(ws_url(chat))
    b = await epws.connect(ws_url(chat))
    async with asyncio.timeout(5):
        await chat.close(timeout=2)
        for conn in (a, b):
            with pytest.raises(epws.ConnectionClosedOK) as info:
                await conn.recv()
            assert info.value.rcvd_code == 1001
    assert len(chat.hub) == 0

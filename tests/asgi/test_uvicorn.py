"""epws as uvicorn's WebSocket implementation, against real Starlette and FastAPI apps.

Every test runs over real sockets against a real uvicorn, once per implementation in
``IMPLEMENTATIONS``: epws's, and uvicorn's own ``websockets-sansio`` and ``wsproto``.
The assertions are the same wherever the ASGI spec defines the behaviour, so the app
sees the same thing whichever implementation serves it; where uvicorn's own
implementations do something else, the test says what and docs/asgi.md explains why
epws does what it does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import zlib
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import epws
from epws.asgi import WebSocketProtocol
from epws.asyncio.corking import SPLIT
from epws.asyncio.keepalive import KEEPALIVE_PAYLOAD
from tests.asyncio.wsraw import close_frame, frame, read_http_head, request_bytes

from .apps import fastapi_app, raw_app, starlette_app
from .uvi import IMPLEMENTATIONS, running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def raw_request(
    port: int, path: str, extra: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send an upgrade request by hand; the status, headers and body read so far."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data, _ = request_bytes(port, path=path, extra=extra)
    writer.write(data)
    status, headers, _ = await read_http_head(reader)
    body = b""
    if status != 101:
        async with asyncio.timeout(10):
            body = await reader.read()  # the server closes after a refusal
    return status, headers, body, reader, writer


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(opcode, rsv bits, payload) of an unmasked server frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, (b0 >> 4) & 0x7, await reader.readexactly(n)


# ----------------------------------------------------------------------------- messages


async def test_echo_text_and_bytes_with_both_clients(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        async with epws.connect(run.url + "/echo") as conn:
            await conn.send("héllo")
            assert await conn.recv() == "héllo"
            await conn.send(b"\x00\xff" * 1000)
            assert await conn.recv() == b"\x00\xff" * 1000
        async with ws_connect(run.url + "/echo") as client:
            for i in range(50):
                await client.send(f"message {i}")
                assert await client.recv() == f"message {i}"
            await client.send(bytes(range(256)))
            assert await client.recv() == bytes(range(256))
        await seen.wait_for(lambda: seen.finished == 2)
    assert seen.disconnects == [(1000, ""), (1000, "")]


async def test_scope_has_every_key_of_the_spec(impl: str) -> None:
    app2, seen2 = starlette_app()
    async with (
        running(app2, impl) as run,
        epws.connect(run.url + "/echo?a=1&b=%20", subprotocols=["x", "y"]) as conn,
    ):
        local = conn.local_address
        remote = conn.remote_address
        await conn.close()
    (scope,) = seen2.scopes
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"]["spec_version"] == ("2.5" if impl == "epws" else "2.4")
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/echo"
    assert scope["raw_path"] == b"/echo"
    assert scope["query_string"] == b"a=1&b=%20"
    assert scope["root_path"] == ""
    assert tuple(scope["server"]) == (remote[0], remote[1])
    assert tuple(scope["client"]) == (local[0], local[1])
    assert scope["subprotocols"] == ["x", "y"]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert "state" in scope
    names = [name for name, _ in scope["headers"]]
    assert all(isinstance(n, bytes) and n == n.lower() for n in names)
    headers = dict(scope["headers"])
    assert headers[b"host"] == f"127.0.0.1:{run.port}".encode()
    if impl == "wsproto":
        # uvicorn's wsproto implementation leaves the handshake's own fields out; the
        # spec says every header, as received.
        assert b"sec-websocket-protocol" not in headers
    else:
        assert headers[b"sec-websocket-protocol"] == b"x, y"
        assert headers[b"upgrade"].lower() == b"websocket"
        assert b"sec-websocket-key" in headers


async def test_root_path_and_percent_decoding(impl: str) -> None:
    app, seen = raw_app()
    async with running(app, impl, root_path="/api") as run:
        status, _, _, _, writer = await raw_request(run.port, "/caf%C3%A9%20x?q=%C3%A9")
        writer.close()
    assert status == 500  # the bare app returns without answering
    (scope,) = seen.scopes
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/café x"
    assert scope["raw_path"] == b"/api/caf%C3%A9%20x"
    assert scope["query_string"] == b"q=%C3%A9"


async def test_subprotocol_is_the_one_the_app_accepts(impl: str) -> None:
    app, _ = starlette_app()
    async with running(app, impl) as run:
        async with epws.connect(run.url + "/echo", subprotocols=["other", "chat.v2"]) as conn:
            assert conn.subprotocol == "chat.v2"
            assert conn.response is not None
            assert conn.response.headers.get("Sec-WebSocket-Protocol") == "chat.v2"
        async with epws.connect(run.url + "/echo", subprotocols=["other"]) as conn:
            assert conn.subprotocol is None


async def test_extra_accept_headers_reach_the_client(impl: str) -> None:
    app, _ = starlette_app()
    async with running(app, impl) as run, epws.connect(run.url + "/headers") as conn:
        assert await conn.recv() == "hello"
        assert conn.response is not None
        headers = conn.response.headers
        assert headers.get("x-extra") == "yes"
        assert headers.get("set-cookie") == "session=abc"
        # uvicorn's default headers (server, date) are on the 101 as on any response.
        assert headers.get("server") == "uvicorn"
        assert headers.get("date")


async def test_fastapi_path_and_query_parameters_and_json(impl: str) -> None:
    app, seen = fastapi_app()
    async with running(app, impl) as run:
        async with epws.connect(run.url + "/items/42?q=hat") as conn:
            await conn.send(json.dumps({"n": 1}))
            assert json.loads(await conn.recv()) == {"item_id": 42, "q": "hat", "echo": {"n": 1}}
            await conn.close(4003, "done")
        await seen.wait_for(lambda: seen.finished == 1)
    assert seen.disconnects == [(4003, "done")]


# ----------------------------------------------------------------------------- refusals


async def test_close_before_accept_is_403(impl: str) -> None:
    app, _ = starlette_app()
    async with running(app, impl) as run:
        with pytest.raises(epws.HandshakeError) as info:
            await epws.connect(run.url + "/forbidden")
        assert info.value.status == 403


async def test_denial_response_extension(impl: str) -> None:
    app, _ = starlette_app()
    async with running(app, impl) as run:
        status, headers, body, _, writer = await raw_request(run.port, "/deny")
        writer.close()
    assert status == 401
    assert headers["www-authenticate"] == "Token"
    assert headers["content-type"].startswith("text/plain")
    assert body == b"no entry\n"


async def test_denial_response_in_several_body_messages(impl: str) -> None:
    app, _ = raw_app()
    async with running(app, impl) as run:
        status, headers, body, _, writer = await raw_request(run.port, "/chunked-denial")
        writer.close()
    assert status == 418
    assert headers["x-teapot"] == "1"
    if headers.get("transfer-encoding") == "chunked":
        decoded = b""
        rest = body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        body = decoded
    assert body == b"I'm a teapot"


async def test_app_failing_before_accept_is_500(
    impl: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = starlette_app()
    async with running(app, impl) as run:
        with pytest.raises(epws.HandshakeError) as info:
            await epws.connect(run.url + "/fail")
        assert info.value.status == 500
    assert "the app failed before accepting" in caplog.text


async def test_app_returning_without_answer_is_500(impl: str) -> None:
    app, _ = raw_app()
    async with running(app, impl) as run:
        status, _, _, _, writer = await raw_request(run.port, "/return-early")
        writer.close()
    assert status == 500


async def test_invalid_upgrade_request_is_refused(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/echo", key="not-base64-of-16-bytes")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        writer.close()
    if impl == "wsproto":
        # uvicorn's wsproto implementation does not check the key (RFC 6455 §4.2.1: a
        # base64-encoded 16-byte value); the client's own check then fails the upgrade.
        assert status == 101
    else:
        assert status == 400
        assert seen.scopes == []  # the app never ran


# ----------------------------------------------------------------------------- closing


async def test_app_close_code_and_reason_reach_the_client(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        conn = await epws.connect(run.url + "/echo")
        await conn.send("close 4001 bye now")
        with pytest.raises(epws.ConnectionClosed) as info:
            await conn.recv()
        assert (info.value.code, info.value.reason) == (4001, "bye now")
        await seen.wait_for(lambda: seen.finished == 1)


async def test_client_close_code_and_reason_reach_the_app(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        async with ws_connect(run.url + "/echo") as client:
            await client.close(4002, "client bye")
        await seen.wait_for(lambda: seen.finished == 1)
    assert seen.disconnects == [(4002, "client bye")]


async def test_empty_close_frame_is_1005_for_the_app(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        conn = await epws.connect(run.url + "/echo")
        await conn.close(None)
        await seen.wait_for(lambda: seen.finished == 1)
    assert seen.disconnects == [(1005, "")]


async def test_app_failing_after_accept(impl: str, caplog: pytest.LogCaptureFixture) -> None:
    """epws closes with 1011 (RFC 6455 §7.4.1); uvicorn's own implementations drop TCP."""
    app, _ = starlette_app()
    async with running(app, impl) as run:
        conn = await epws.connect(run.url + "/echo")
        await conn.send("raise")
        with pytest.raises(epws.ConnectionClosed) as info:
            await conn.recv()
    assert info.value.code == (1011 if impl == "epws" else 1006)
    assert "the app failed after accepting" in caplog.text


async def test_message_over_ws_max_size_is_1009(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl, ws_max_size=4096) as run:
        conn = await epws.connect(run.url + "/echo")
        await conn.send("a" * 4096)
        assert await conn.recv() == "a" * 4096
        await conn.send("a" * 4097)
        with pytest.raises(epws.ConnectionClosed) as info:
            await conn.recv()
        assert info.value.code == 1009
        await seen.wait_for(lambda: seen.finished == 1)
    assert seen.disconnects[0][0] == 1009


async def test_oversize_message_is_refused_before_it_is_buffered() -> None:
    """The 1009 comes from the frame header: the server never takes the payload in."""
    app, _seen = starlette_app()
    async with running(app, "epws", ws_max_size=4096) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/echo")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        assert status == 101
        # A header announcing 1 GiB, then only a little payload: the answer is 1009.
        writer.write(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 30) + b"\0" * 8)
        opcode, _, payload = await read_server_frame(reader)
        writer.close()
    assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1009


async def test_protocol_error_closes_with_1002() -> None:
    app, seen = starlette_app()
    async with running(app, "epws") as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/echo")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        assert status == 101
        writer.write(frame(1, b"unmasked", mask=False))
        opcode, _, payload = await read_server_frame(reader)
        writer.close()
        await seen.wait_for(lambda: seen.finished == 1)
    assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1002
    assert seen.disconnects[0][0] == 1002


# ----------------------------------------------------------------------------- compression


async def test_compression_with_a_browser_offer(impl: str) -> None:
    """Chrome and Firefox offer ``permessage-deflate; client_max_window_bits``."""
    app, _ = starlette_app()
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    async with running(app, impl) as run:
        status, headers, _, reader, writer = await raw_request(run.port, "/echo", offer)
        assert status == 101
        assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
        text = "compress me " * 200
        deflate = zlib.compressobj(wbits=-15)
        wire = deflate.compress(text.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
        writer.write(frame(1, wire[:-4], rsv=4))
        opcode, rsv, payload = await read_server_frame(reader)
        assert opcode == 1 and rsv == 4, "the echo comes back compressed"
        assert len(payload) < len(text) // 4
        inflate = zlib.decompressobj(wbits=-15)
        assert inflate.decompress(payload + b"\x00\x00\xff\xff").decode() == text
        writer.write(close_frame(1000))
        opcode, _, _ = await read_server_frame(reader)
        assert opcode == 8
        writer.close()
    async with (
        running(app, impl) as run,
        ws_connect(
            run.url + "/echo",
            extensions=[ClientPerMessageDeflateFactory(client_max_window_bits=True)],
            compression=None,
        ) as client,
    ):
        await client.send(text)
        assert await client.recv() == text


async def test_compression_off_with_ws_per_message_deflate_false(impl: str) -> None:
    app, _ = starlette_app()
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    async with running(app, impl, ws_per_message_deflate=False) as run:
        status, headers, _, _, writer = await raw_request(run.port, "/echo", offer)
        writer.close()
    assert status == 101
    assert "sec-websocket-extensions" not in headers


# ----------------------------------------------------------------------------- lifecycle


async def test_shutdown_closes_with_1012_and_waits_for_the_apps(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        conns = [await epws.connect(run.url + "/idle") for _ in range(3)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        shutdown = loop.create_task(run.shutdown())
        for conn in conns:
            with pytest.raises(epws.ConnectionClosed) as info:
                await conn.recv()
            assert info.value.code == 1012
        await shutdown
        assert loop.time() - started < 5
    assert seen.finished == 3
    assert [code for code, _ in seen.disconnects] == [1012] * 3
    assert not run.server.server_state.connections
    assert not run.server.server_state.tasks


async def test_client_that_disappears_ends_the_app(impl: str) -> None:
    app, seen = starlette_app()
    async with running(app, impl) as run:
        conn = await epws.connect(run.url + "/idle")
        conn.abort()
        await seen.wait_for(lambda: seen.finished == 1)
        assert seen.disconnects[0][0] in (1005, 1006)
        async with asyncio.timeout(10):
            while run.server.server_state.connections:
                await asyncio.sleep(0.01)


async def test_client_that_disappears_while_the_app_sends(impl: str) -> None:
    """The app's send raises an OSError (spec 2.4), which Starlette turns into its disconnect."""
    app, seen = starlette_app()
    async with running(app, impl) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/push")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        assert status == 101
        await reader.readexactly(65536)
        writer.transport.abort()
        await seen.wait_for(lambda: seen.finished == 1)
        async with asyncio.timeout(10):
            while run.server.server_state.connections:
                await asyncio.sleep(0.01)
    (error,) = seen.send_errors
    assert isinstance(error, WebSocketDisconnect)


async def test_app_send_waits_for_a_client_that_does_not_read(impl: str) -> None:
    """Flow control to the app: while the client reads nothing, the app's sends stop.

    What the server holds is bounded by the kernel's socket buffers (a few MiB on
    loopback) plus the transport's high-water mark, whatever the app tries to send.
    """
    app, seen = starlette_app()
    async with running(app, impl) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port, limit=65536)
        data, _ = request_bytes(run.port, path="/push")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        assert status == 101
        await asyncio.sleep(1.0)
        stalled_at = seen.sent
        await asyncio.sleep(0.5)
        assert seen.sent == stalled_at, "the app is blocked in send"
        assert stalled_at * 65536 < 32 * 1024 * 1024
        assert seen.finished == 0
        writer.transport.abort()
        await seen.wait_for(lambda: seen.finished == 1)


async def test_app_returning_after_accept_closes_the_connection(impl: str) -> None:
    """epws closes with 1000 (the app is done); uvicorn's own implementations drop TCP."""
    app, _ = raw_app()
    async with running(app, impl) as run:
        conn = await epws.connect(run.url + "/accept-and-return")
        with pytest.raises(epws.ConnectionClosed) as info:
            await conn.recv()
    assert info.value.code == (1000 if impl == "epws" else 1006)


# ----------------------------------------------------------------------------- epws only


async def test_unoffered_subprotocol_fails_the_app_before_the_101() -> None:
    app, seen = raw_app()
    async with running(app, "epws") as run:
        status, _, _, _, writer = await raw_request(
            run.port, "/wrong-subprotocol", [("Sec-WebSocket-Protocol", "a, b")]
        )
        writer.close()
    assert status == 500
    (error,) = seen.send_errors
    assert "not offered" in str(error)


async def test_unread_messages_pause_reading_at_ws_max_queue() -> None:
    """Flow control from the client: reading stops once ws_max_queue messages wait."""
    app, seen = raw_app()
    async with (
        running(app, "epws", ws_max_queue=4) as run,
        epws.connect(run.url + "/hold", compression=None) as conn,
    ):
        size = 64 * 1024
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(200):
                await conn.send(os.urandom(size))
                sent += 1

        sender = asyncio.get_running_loop().create_task(flood())
        (proto,) = run.server.server_state.connections
        assert isinstance(proto, WebSocketProtocol) and proto.conn is not None
        inbound = proto.conn._inbound
        async with asyncio.timeout(20):
            while not inbound.paused:
                await asyncio.sleep(0.01)
        # The Conn parses each read whole (at most 256 KiB on both loops), so the
        # queue stops at ws_max_queue plus what the last read completed.
        assert len(inbound) <= 4 + (256 * 1024) // size + 1
        # The client is pushed back: what it sends stays in the kernel's buffers.
        async with asyncio.timeout(20):
            while True:
                before = sent
                await asyncio.sleep(0.5)
                if sent == before:
                    break
        assert not sender.done()
        assert sent * size < 32 * 1024 * 1024
        assert len(inbound) <= 4 + (256 * 1024) // size + 1
        seen.release.set()
        await sender
        assert await conn.recv() == "200"


async def test_frames_sent_before_the_101_are_read_after_it() -> None:
    """A client that does not wait for the 101 (RFC 6455 §4.1 says it must): its frames
    are held, reading pauses, and the Conn parses them once the app accepts."""
    app, _ = raw_app()
    async with running(app, "epws") as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/slow-accept")
        writer.write(data)
        await asyncio.sleep(0.1)  # uvicorn has handed over; the app has not accepted
        writer.write(frame(1, b"early"))
        status, _, _ = await read_http_head(reader)
        assert status == 101
        opcode, _, payload = await read_server_frame(reader)
        assert (opcode, payload) == (1, b"got early")
        writer.close()


def segments_out(sock: Any) -> int:
    """Segments the kernel has sent on a TCP socket (tcp_info's tcpi_segs_out, Linux)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    # 8 one-byte fields, 24 u32, 4 u64, then tcpi_segs_out (Linux >= 4.2).
    return int(struct.unpack_from("I", info, 8 + 24 * 4 + 4 * 8)[0])


async def test_frames_of_one_app_step_leave_in_a_few_writes() -> None:
    """The Conn's corking across ASGI sends: 100 messages sent in one step of the app's
    task leave in a few writes, not in a system call each. Each write was a system call
    and usually a TCP segment of its own: that cost epws.asgi its lead on echo of
    queued messages and on a broadcast of queued lines. The connection is the only one
    writing, so its first frames leave early in groups that double (SPLIT, 2 SPLIT, ...:
    corking.py), the rest when the app waits in receive(): held frames never wait for
    more than the step."""
    groups, early, size = 0, 0, SPLIT
    while early + size <= 100:
        groups, early, size = groups + 1, early + size, size * 2
    assert 0 < early < 100, "the test needs early groups and a rest"
    app, seen = raw_app()
    async with running(app, "epws") as run:

        def probe() -> int:
            (proto,) = run.server.server_state.connections
            assert isinstance(proto, WebSocketProtocol) and proto.conn is not None
            return segments_out(proto.conn.transport.get_extra_info("socket"))

        seen.probe = probe
        async with epws.connect(run.url + "/burst", compression=None) as conn:
            got = [await conn.recv() for _ in range(100)]
            assert got == [str(i) for i in range(100)]
            await conn.send("all")
            assert await conn.recv() == "got all"
    before, after_step, after_answer = seen.probed
    # The early groups (with SPLIT 1: six, 63 frames) during the step, a segment each:
    # 100 frames in a system call each would have been 100 segments.
    assert after_step - before == groups
    # The rest in one write once the app waits, plus at most the ACK of the answer.
    assert after_answer - after_step <= 2


async def test_keepalive_closes_a_client_that_never_answers_pings() -> None:
    app, seen = starlette_app()
    async with running(app, "epws", ws_ping_interval=0.2, ws_ping_timeout=0.3) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        data, _ = request_bytes(run.port, path="/idle")
        writer.write(data)
        status, _, _ = await read_http_head(reader)
        assert status == 101
        loop = asyncio.get_running_loop()
        started = loop.time()
        opcode, _, payload = await read_server_frame(reader)
        # A ping, which this client never answers: the library's keepalive's (its
        # payload), not a timer of the ASGI layer's own.
        assert (opcode, payload) == (9, KEEPALIVE_PAYLOAD)
        opcode, _, payload = await read_server_frame(reader)
        assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1011
        # TCP goes at once, without waiting for a close frame this client never sends.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert loop.time() - started < 5
        await seen.wait_for(lambda: seen.finished == 1)
        assert seen.disconnects == [(1011, "keepalive ping timeout")]
        writer.close()


async def test_keepalive_keeps_a_client_that_answers() -> None:
    app, _ = starlette_app()
    async with (
        running(app, "epws", ws_ping_interval=0.1, ws_ping_timeout=0.5) as run,
        epws.connect(run.url + "/echo") as conn,
    ):
        for _ in range(8):
            await asyncio.sleep(0.1)
            await conn.send("still here")
            assert await conn.recv() == "still here"


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_both_of_uvicorns_http_parsers_hand_over(http: str) -> None:
    app, _ = starlette_app()
    async with (
        running(app, "epws", http=http) as run,
        epws.connect(run.url + "/echo?x=1", subprotocols=["chat.v1"]) as conn,
    ):
        assert conn.subprotocol == "chat.v1"
        await conn.send("over " + http)
        assert await conn.recv() == "over " + http

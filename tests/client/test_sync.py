"""The blocking client ``epws.sync``: the sans-I/O core over a plain socket, against
an epws server (on a loop in a thread) and the ``websockets`` library's sync server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.sync.server import ServerConnection, serve as ws_serve

import epws
import epws.sync
from epws import ConnectionClosedError, ConnectionClosedOK, HandshakeError, HTTPResponse, Request

from . import proxies
from .servers import ThreadedServer, echo


@contextmanager
def websockets_server(handler: Any, **options: Any) -> Iterator[int]:
    """The websockets library's own (threaded) server; yields its port."""
    with ws_serve(handler, "127.0.0.1", 0, **options) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(10)


def ws_echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


# ---------------------------------------------------------------- against epws


def test_echo_iteration_and_clean_close() -> None:
    with ThreadedServer(echo) as srv:
        with epws.sync.connect(f"ws://127.0.0.1:{srv.port}/") as conn:
            conn.send("hello")
            conn.send(b"\x00\x01")
            conn.send(bytearray(b"ba"))
            assert conn.recv(timeout=5) == "hello"
            assert conn.recv(timeout=5) == b"\x00\x01"
            assert conn.recv(timeout=5) == b"ba"
            rtt = conn.ping(b"p")
            assert 0 <= rtt < 5
        assert conn.close_code == 1000
        with pytest.raises(ConnectionClosedOK):
            conn.recv()
        with pytest.raises(ConnectionClosedOK):
            conn.send("late")


def test_iteration_ends_on_a_clean_close_from_the_server() -> None:
    async def talk(conn: epws.Conn) -> None:
        for i in range(5):
            await conn.send(str(i))
        await conn.close()

    with ThreadedServer(talk) as srv:
        conn = epws.sync.connect(f"ws://127.0.0.1:{srv.port}/")
        assert list(conn) == ["0", "1", "2", "3", "4"]
        assert conn.close_code == 1000


def test_recv_timeout_is_bounded_and_the_connection_stays_usable() -> None:
    async def slow(conn: epws.Conn) -> None:
        await conn.recv()
        await asyncio.sleep(0.5)
        await conn.send("late")
        await echo(conn)

    with ThreadedServer(slow) as srv, epws.sync.connect(f"ws://127.0.0.1:{srv.port}/") as conn:
        conn.send("go")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 1.5
        assert conn.recv(timeout=5) == "late"
        conn.send("still")
        assert conn.recv(timeout=5) == "still"


def test_read_limit_closes_with_1009() -> None:
    async def big(conn: epws.Conn) -> None:
        await conn.send(b"x" * (256 * 1024))
        await conn.wait_closed()

    with ThreadedServer(big, compression=None) as srv:
        conn = epws.sync.connect(f"ws://127.0.0.1:{srv.port}/", read_limit=64 * 1024)
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=5)
        assert info.value.sent_code == 1009


def test_server_close_code_is_reported() -> None:
    async def bye(conn: epws.Conn) -> None:
        await conn.send("last words")
        await conn.close(4001, "custom")

    with ThreadedServer(bye) as srv:
        conn = epws.sync.connect(f"ws://127.0.0.1:{srv.port}/")
        assert conn.recv(timeout=5) == "last words"
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=5)
        assert (info.value.code, info.value.reason) == (4001, "custom")
        assert conn.close_code == 4001


def test_send_from_another_thread_while_recv_blocks() -> None:
    with ThreadedServer(echo) as srv, epws.sync.connect(f"ws://127.0.0.1:{srv.port}/") as conn:
        timer = threading.Timer(0.2, conn.send, args=("from the other thread",))
        timer.start()
        try:
            assert conn.recv(timeout=5) == "from the other thread"
        finally:
            timer.join()


def test_refused_handshake_redirect_and_unix_socket(tmp_path: Path) -> None:
    def route(request: Request) -> HTTPResponse | None:
        if request.path == "/private":
            return HTTPResponse(403, "no")
        if request.path == "/old":
            return HTTPResponse(302, headers=[("Location", "/new")])
        return None

    with ThreadedServer(echo, process_request=route) as srv:
        with pytest.raises(HandshakeError) as info:
            epws.sync.connect(f"ws://127.0.0.1:{srv.port}/private")
        assert info.value.status == 403
        with epws.sync.connect(f"ws://127.0.0.1:{srv.port}/old") as conn:
            assert conn.response.status == 101
            conn.send("r")
            assert conn.recv(timeout=5) == "r"

    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    with ThreadedServer(echo, sock=listener), epws.sync.unix_connect(str(path)) as conn:
        conn.send("unix")
        assert conn.recv(timeout=5) == "unix"


def test_close_is_bounded_when_the_server_never_answers() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def mute_server() -> None:
        from epws.protocol.handshake import accept_key

        peer, _ = listener.accept()
        accepted.append(peer)
        head = b""
        while b"\r\n\r\n" not in head:
            head += peer.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        peer.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )

    thread = threading.Thread(target=mute_server, daemon=True)
    thread.start()
    try:
        conn = epws.sync.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.3)
        started = time.monotonic()
        conn.close()
        assert time.monotonic() - started < 5  # close_timeout 0.3 s, not 10 s
        assert conn.close_code == 1006
    finally:
        thread.join(5)
        for peer in accepted:
            peer.close()
        listener.close()


# ---------------------------------------------------------------- against websockets


def test_against_the_websockets_server_with_compression() -> None:
    with websockets_server(ws_echo) as port:
        with epws.sync.connect(f"ws://127.0.0.1:{port}/") as conn:
            assert "permessage-deflate" in (
                conn.response.headers.get("Sec-WebSocket-Extensions") or ""
            )
            text = "compressible " * 10_000
            conn.send(text)
            assert conn.recv(timeout=5) == text
            conn.send(b"\xff" * 70_000)
            assert conn.recv(timeout=5) == b"\xff" * 70_000
        assert conn.close_code == 1000


def test_server_pings_are_answered_while_reading() -> None:
    def pinger(ws: ServerConnection) -> None:
        pong = ws.ping(b"are you there")
        ws.send("pinged")
        ws.send("pong in time" if pong.wait(5) else "no pong")

    with websockets_server(pinger) as port, epws.sync.connect(f"ws://127.0.0.1:{port}/") as conn:
        assert conn.recv(timeout=5) == "pinged"
        assert conn.recv(timeout=5) == "pong in time"


def test_wss_with_the_websockets_server() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with (
        websockets_server(ws_echo, ssl=server_ctx) as port,
        epws.sync.connect(f"wss://localhost:{port}/", ssl=client_ctx) as conn,
    ):
        conn.send("secret")
        assert conn.recv(timeout=5) == "secret"


# ---------------------------------------------------------------- proxies


def test_through_http_and_socks_proxies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ws_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with websockets_server(ws_echo) as port:
        url = f"ws://127.0.0.1:{port}/"
        with proxies.tinyproxy(tmp_path) as http_port, proxies.dante(tmp_path) as socks_port:
            for proxy, proxy_port in [
                (f"http://127.0.0.1:{http_port}", http_port),
                (f"socks5://127.0.0.1:{socks_port}", socks_port),
            ]:
                with epws.sync.connect(url, proxy=proxy) as conn:
                    assert conn.socket.getpeername()[1] == proxy_port
                    conn.send("via")
                    assert conn.recv(timeout=5) == "via"
        with proxies.tinyproxy(tmp_path, auth=("u", "p")) as http_port:
            with pytest.raises(epws.ProxyError) as info:
                epws.sync.connect(url, proxy=f"http://u:bad@127.0.0.1:{http_port}")
            assert info.value.status in (401, 407)


def test_redirect_to_another_origin_drops_credentials() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def record(request: Request) -> None:
        seen.append((request.headers.get("Authorization"), request.headers.get("X-Trace")))

    with ThreadedServer(echo, process_request=record) as target:

        def redirect(request: Request) -> HTTPResponse:
            return HTTPResponse(302, headers=[("Location", f"ws://127.0.0.1:{target.port}/")])

        with ThreadedServer(echo, process_request=redirect) as first:
            headers = [("Authorization", "Bearer s3cret"), ("X-Trace", "t1")]
            with epws.sync.connect(f"ws://127.0.0.1:{first.port}/", headers=headers):
                pass
    assert seen == [(None, "t1")]


def _handshake_only_server() -> tuple[socket.socket, Any]:
    """A raw server thread: answers the upgrade, then runs ``then(peer)``."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(then: Any) -> threading.Thread:
        def run() -> None:
            from epws.protocol.handshake import accept_key

            peer, _ = listener.accept()
            with peer:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += peer.recv(4096)
                key = next(
                    line.split(b":", 1)[1].strip().decode()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key")
                )
                peer.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n"
                    + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
                )
                then(peer)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    return listener, serve


def test_unsolicited_pongs_are_not_kept() -> None:
    """A server sending pongs nobody asked for must not make the client hoard them."""
    import tracemalloc

    listener, serve = _handshake_only_server()
    count = 10_000

    # 10 000 pongs of 125 bytes, each payload distinct, built before measuring.
    frames = b"".join(b"\x8a\x7d" + i.to_bytes(4, "big") + b"p" * 121 for i in range(count))

    def flood(peer: socket.socket) -> None:
        peer.sendall(frames + b"\x81\x04done")
        peer.recv(1024)  # until the client closes

    thread = serve(flood)
    try:
        conn = epws.sync.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            assert conn.recv(timeout=60) == "done"  # tracemalloc is slow
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        conn.socket.close()
        assert kept < 200_000, f"{kept} bytes kept after {count} unsolicited pongs"
    finally:
        thread.join(10)
        listener.close()


def test_keepalive_measures_latency_and_fails_a_deaf_peer() -> None:
    with ThreadedServer(echo) as srv:
        conn = epws.sync.connect(f"ws://127.0.0.1:{srv.port}/", ping_interval=0.1)
        with conn:
            with pytest.raises(TimeoutError):
                conn.recv(timeout=0.5)  # pings went out and were answered meanwhile
            assert conn.latency is not None
            assert 0 <= conn.latency < 0.5
            conn.send("still open")
            assert conn.recv(timeout=5) == "still open"

    listener, serve = _handshake_only_server()

    def deaf(peer: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while peer.recv(4096):
                pass  # reads everything, answers nothing

    thread = serve(deaf)
    try:
        conn = epws.sync.connect(
            f"ws://127.0.0.1:{listener.getsockname()[1]}/", ping_interval=0.2, ping_timeout=0.3
        )
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=10)
        elapsed = time.monotonic() - started
        assert info.value.sent_code == 1011
        assert 0.45 <= elapsed < 5  # interval + timeout, not the 10 s recv timeout
    finally:
        thread.join(10)
        listener.close()

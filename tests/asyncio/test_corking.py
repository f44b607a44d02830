"""Corked writes (corking.py): when the replies to a pipelined read reach the peer.

The tests look at the client's socket from inside the server's message callback
(MSG_PEEK, on the same loop): what is there is what the server has handed to the
kernel so far, so the test sees exactly which replies left before the read's last
message was handled.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import epws
from epws.asyncio.corking import SPLIT

from .wsraw import frame, request_bytes

MESSAGES = 16
assert 3 * SPLIT < MESSAGES, "the tests need two early groups and a rest"


def early(i: int) -> int:
    """Replies the peer holds after the i-th: the groups of SPLIT, 2 SPLIT, ... done."""
    done, group = 0, SPLIT
    while done + group <= i:
        done += group
        group *= 2
    return REPLY * done


PAYLOAD = 64
REPLY = 2 + PAYLOAD  # a server frame of 64 bytes: two header bytes, no mask


async def raw_client(port: int) -> socket.socket:
    """A non-blocking socket with the handshake done and nothing unread on it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request, _ = request_bytes(port)
    await loop.sock_sendall(sock, request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 4096)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert head.endswith(b"\r\n\r\n"), "server sent more than its 101"
    return sock


def visible(sock: socket.socket) -> int:
    """Bytes the server has handed to the kernel that this socket has not read."""
    try:
        return len(sock.recv(1 << 20, socket.MSG_PEEK))
    except BlockingIOError:
        return 0


def pipelined() -> bytes:
    """MESSAGES binary frames of PAYLOAD bytes in one piece, each carrying its index."""
    return b"".join(frame(2, struct.pack("!Q", i) * (PAYLOAD // 8)) for i in range(MESSAGES))


async def read_replies(sock: socket.socket) -> list[int]:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while len(data) < MESSAGES * REPLY:
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, "server closed"
            data += chunk
    assert len(data) == MESSAGES * REPLY
    replies = [data[k : k + REPLY] for k in range(0, len(data), REPLY)]
    assert all(r[:2] == bytes((0x82, PAYLOAD)) for r in replies)
    return [struct.unpack("!Q", r[2:10])[0] for r in replies]


async def echo_server(
    seen: dict[epws.Conn, list[int]], peer: dict[epws.Conn, socket.socket]
) -> epws.Server:
    """Echo in callback mode; after each reply, note what the client's socket holds."""

    def on_connect(conn: epws.Conn) -> None:
        seen[conn] = []

        def on_message(message: str | bytes) -> None:
            conn.send_nowait(message)
            seen[conn].append(visible(peer[conn]))

        conn.on_message = on_message

    return await epws.serve(on_connect, "127.0.0.1", 0, close_timeout=2.0)


async def connect_pair(
    server: epws.Server, seen: dict[epws.Conn, list[int]], peer: dict[epws.Conn, socket.socket]
) -> socket.socket:
    before = set(seen)
    sock = await raw_client(server.port)
    async with asyncio.timeout(5):
        while set(seen) == before:
            await asyncio.sleep(0.001)
    (conn,) = set(seen) - before
    peer[conn] = sock
    return sock


async def test_a_connection_alone_in_its_iteration_writes_every_split_frames() -> None:
    seen: dict[epws.Conn, list[int]] = {}
    peer: dict[epws.Conn, socket.socket] = {}
    server = await echo_server(seen, peer)
    try:
        sock = await connect_pair(server, seen, peer)
        sock.send(pipelined())  # one piece: the server reads it in one go
        assert await read_replies(sock) == list(range(MESSAGES))
        (marks,) = seen.values()
        # After the i-th reply the peer already holds every whole group (SPLIT, then
        # twice as many): it could start on them while the rest were being made.
        assert marks == [early(i) for i in range(1, MESSAGES + 1)]
        assert marks[SPLIT - 1] == REPLY * SPLIT and marks[-1] < REPLY * MESSAGES
        sock.close()
    finally:
        await server.close(timeout=2.0)


async def test_with_two_connections_busy_the_second_writes_once_at_the_end() -> None:
    seen: dict[epws.Conn, list[int]] = {}
    peer: dict[epws.Conn, socket.socket] = {}
    server = await echo_server(seen, peer)
    try:
        first = await connect_pair(server, seen, peer)
        second = await connect_pair(server, seen, peer)
        # Both reads are in the kernel before the loop next polls: one iteration
        # handles both connections.
        first.send(pipelined())
        second.send(pipelined())
        assert await read_replies(first) == list(range(MESSAGES))
        assert await read_replies(second) == list(range(MESSAGES))
        marks = sorted(seen.values())
        # The connection handled second had company: nothing left before the end of
        # the iteration. The one handled first was alone when it began, and split.
        assert marks[0] == [0] * MESSAGES
        assert marks[1] == [early(i) for i in range(1, MESSAGES + 1)]
        first.close()
        second.close()
    finally:
        await server.close(timeout=2.0)


async def test_replies_and_later_writes_stay_in_order_across_splits() -> None:
    """Frames written after a split (here a text reply per message) keep wire order."""
    sent: list[str] = []

    def on_connect(conn: epws.Conn) -> None:
        def on_message(message: str | bytes) -> None:
            conn.send_nowait(message)
            text = f"after {len(sent)}"
            sent.append(text)
            conn.send_nowait(text)

        conn.on_message = on_message

    server = await epws.serve(on_connect, "127.0.0.1", 0, close_timeout=2.0)
    try:
        async with epws.connect(f"ws://127.0.0.1:{server.port}/") as client:
            assert client.transport is not None
            client.transport.writelines(
                [frame(1, f"m{i}".encode()) for i in range(37)]
            )  # pipelined, below the client's own framing
            got = []
            async with asyncio.timeout(10):
                for _ in range(74):
                    got.append(await client.recv())
            want: list[str] = []
            for i in range(37):
                want += [f"m{i}", f"after {i}"]
            assert got == want
    finally:
        await server.close(timeout=2.0)

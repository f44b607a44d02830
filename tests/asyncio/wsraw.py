"""A hand-rolled WebSocket peer on raw asyncio streams, for tests that need to misbehave.

It speaks just enough RFC 6455 to do what epws's own client and server never would:
not answer a close frame, never read, send invalid frames, or send several frames in
one packet. It uses only the standard library and the handshake's accept_key helper.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from epws.protocol.handshake import accept_key


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
) -> bytes:
    """One frame; masked by default (what a client must send)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_frame(code: int | None = 1000, reason: str = "", *, mask: bool = True) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
    return frame(8, payload, mask=mask)


def request_bytes(
    port: int,
    *,
    path: str = "/",
    key: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    version: str = "13",
) -> tuple[bytes, str]:
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


async def read_http_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and the raw head of an HTTP response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, head


class RawClient:
    """A raw-socket WebSocket client: full control over every byte it sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        rcvbuf: int | None = None,
        extra: list[tuple[str, str]] | None = None,
        upgrade: bool = True,
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small stream limit: the StreamReader stops reading the socket at twice
        # the limit, so a test that "does not read" really leaves data in the kernel.
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        client = cls(reader, writer)
        if upgrade:
            data, key = request_bytes(port, extra=extra)
            writer.write(data)
            status, headers, _ = await read_http_head(reader)
            assert status == 101, status
            assert headers["sec-websocket-accept"] == accept_key(key)
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next (unmasked, server) frame."""
        b0, b1 = await self.reader.readexactly(2)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(n) if n else b""
        return b0 & 0x0F, bool(b0 & 0x80), payload

    async def read_close(self) -> tuple[int | None, str]:
        """Skip data frames until a close frame; return its code and reason."""
        while True:
            opcode, _, payload = await self.read_frame()
            if opcode == 8:
                if not payload:
                    return None, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def at_eof(self) -> bool:
        """Wait for the server to close TCP; True if it did (EOF or reset)."""
        try:
            data = await self.reader.read(1 << 16)
        except ConnectionResetError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.transport.abort()

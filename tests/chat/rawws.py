"""A bare WebSocket client on a plain socket, for what library clients hide.

The chat tests need a client that never reads (with a tiny receive buffer), one that
never answers pings, one that writes many frames in a single system call, and one that
sees each frame as it is on the wire (ping payloads, an empty close payload). Library
clients do all of these things for you, so this one does none of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    mask = os.urandom(4)
    head += mask
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + masked


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class RawClient:
    """One WebSocket connection over a non-blocking socket driven by the loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        rcvbuf: int | None = None,
        path: str = "/ws",
        origin: str | None = None,
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the peer sees is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        self = cls(sock)
        await self.loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        await self.loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = await self.loop.sock_recv(sock, 4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            sock.close()
            raise ConnectionError(f"handshake refused: {status!r}")
        return self

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def send_frames(self, frames: list[bytes]) -> None:
        """Write all ``frames`` in one ``sendall``: the server sees them together."""
        await self.loop.sock_sendall(self.sock, b"".join(frames))

    async def send_text(self, text: str) -> None:
        await self.send_frames([client_frame(TEXT, text.encode())])

    async def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise EOFError("connection closed by the server")
            self.buf += chunk

    async def read_frame(self) -> Frame:
        """The next frame from the server (unmasked, as RFC 6455 requires)."""
        await self._fill(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        offset = 2
        if n == 126:
            await self._fill(4)
            n = struct.unpack_from("!H", self.buf, 2)[0]
            offset = 4
        elif n == 127:
            await self._fill(10)
            n = struct.unpack_from("!Q", self.buf, 2)[0]
            offset = 10
        await self._fill(offset + n)
        payload = bytes(self.buf[offset : offset + n])
        del self.buf[: offset + n]
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    async def read_until_eof(self) -> list[Frame]:
        """Every frame until the server closes TCP (or resets it); a close is echoed."""
        frames: list[Frame] = []
        while True:
            try:
                frame = await self.read_frame()
            except (EOFError, ConnectionResetError):
                return frames
            frames.append(frame)
            if frame.opcode == CLOSE:
                with contextlib.suppress(OSError):
                    await self.send_frames([client_frame(CLOSE, frame.payload)])

    def close(self) -> None:
        self.sock.close()

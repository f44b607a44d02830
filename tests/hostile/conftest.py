"""Fixtures of the hostile-peer suite: a server subprocess, its memory, a witness client.

The server (tests/hostile/serve.py) runs on each loop type (``server_loop``); the
attacking side runs in the test process on asyncio only, since what is measured is
the server (see ``pytestmark`` in each module).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import epws

ROOT = Path(__file__).resolve().parents[2]
#: What the running test measured; printed at its end (``pytest -s`` shows them).
FIGURES: dict[str, object] = {}
MiB = 1 << 20
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    """A running server subprocess, and how to look at it from outside."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def rss(self) -> int:
        """Resident memory now, in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")  # pragma: no cover

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stats(self) -> dict[str, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET /stats HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
            async with asyncio.timeout(5):
                data = await reader.read()
        finally:
            writer.close()
        result: dict[str, int] = json.loads(data.partition(b"\r\n\r\n")[2])
        return result

    async def wait_for(self, check: Callable[[dict[str, int]], bool], timeout: float) -> None:
        """Poll /stats until ``check`` holds; fail with the last figures after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                figures = await self.stats()
            except (OSError, ValueError):  # at the fd limit uvloop drops new connections
                figures = {"unreachable": 1}
            else:
                if check(figures):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"server stats after {timeout} s: {figures}")
            await asyncio.sleep(0.05)


def start_server(loop: str, log_path: Path, *options: str) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile.serve", "--loop", loop, *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log_path.open("wb"),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b"PORT "):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {log_path.read_text()}")
    return Served(proc, int(line.split()[1]), log_path)


def stop_server(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        served.proc.kill()
        served.proc.wait()
    assert served.proc.stdout is not None
    served.proc.stdout.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def server_loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(server_loop: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """A fresh server per test, so each starts from its own memory baseline."""
    FIGURES.clear()
    srv = start_server(server_loop, tmp_path / "server.log")
    try:
        yield srv
    finally:
        stop_server(srv)
        print(f"\nFIGURES {request.node.name}: {FIGURES}")
    # Whatever the attack, the server never logs a traceback (a failure it did not expect).
    assert "Traceback" not in srv.log(), srv.log()[-4000:]


# ------------------------------------------------------------------ measuring


class Peak:
    """Samples the server's RSS while an attack runs; ``growth`` is peak minus start."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.start = served.rss()
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.served.rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Peak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self.served.rss())
        FIGURES["rss growth MiB"] = round((self.peak - self.start) / MiB, 2)

    @property
    def growth(self) -> int:
        return self.peak - self.start


@dataclass
class Witness:
    """A well-behaved client that keeps echoing while the server is attacked."""

    conn: epws.Conn
    latencies: list[float] = field(default_factory=list)
    sent_at: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            n += 1
            message = f"witness {n}"
            self.sent_at = loop.time()
            await self.conn.send(message)
            assert await self.conn.recv() == message
            self.latencies.append(loop.time() - self.sent_at)
            self.sent_at = None
            await asyncio.sleep(0.02)

    async def served_once_more(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for one more echo: the server still serves."""
        target = len(self.latencies) + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.latencies) < target:
                    await asyncio.sleep(0.01)

    def check(self, max_latency: float, min_echoes: int = 1) -> None:
        """Echoes kept coming, each within ``max_latency`` seconds (a pending one too)."""
        waiting = 0.0
        if self.sent_at is not None:
            waiting = asyncio.get_running_loop().time() - self.sent_at
        assert len(self.latencies) >= min_echoes, (len(self.latencies), waiting)
        worst = max([*self.latencies, waiting])
        assert worst < max_latency, f"worst echo {worst:.3f} s over {len(self.latencies)}"


@asynccontextmanager
async def witness(served: Served, path: str = "/") -> AsyncIterator[Witness]:
    conn = await epws.connect(f"ws://127.0.0.1:{served.port}{path}", compression=None)
    w = Witness(conn)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        FIGURES["witness echoes"] = len(w.latencies)
        FIGURES["witness worst s"] = round(max(w.latencies, default=-1), 3)
        if task.done() and task.exception() is not None:
            raise AssertionError("the witness failed") from task.exception()
        task.cancel()
        await conn.close()


# ------------------------------------------------------------------ raw attackers

#: A zero masking key: legal on the wire (the server cannot tell), and it makes the
#: masked payload the payload itself, so that attackers build megabytes of frames
#: without masking them byte by byte in Python.
_ZERO_MASK = b"\x00\x00\x00\x00"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame (masked with a zero key)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


def request(port: int, path: str = "/", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def raw_upgrade(
    port: int, path: str = "/", *, rcvbuf: int | None = None, extra: str = "", rest: bytes = b""
) -> socket.socket:
    """A raw socket, upgraded (``rest`` rides in the request's packet); the 101 is read."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request(port, path, extra) + rest)
    head = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1)  # byte by byte: leave frames unread
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send ``data`` again and again for ``seconds`` (or until the server stops taking
    it); return the bytes the kernel accepted."""
    loop = asyncio.get_running_loop()
    sent = 0
    deadline = loop.time() + seconds
    view = memoryview(data)
    while loop.time() < deadline:
        try:
            n = sock.send(view)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        except OSError:
            break  # the server dropped us
        sent += n
        view = view[n:] if n < len(view) else memoryview(data)
        await asyncio.sleep(0)
    return sent


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) until the server closes the connection; False on timeout."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            while await loop.sock_recv(sock, 65536):
                pass
    except TimeoutError:
        return False
    except OSError:
        pass  # a reset is a close too
    return True

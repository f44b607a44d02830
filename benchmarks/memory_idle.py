"""Measure the server's memory per idle WebSocket connection, epws next to websockets.

For each library, an echo server runs in its own subprocess (so the figure is the
server's alone); this process opens N connections to it with raw sockets (a minimal
upgrade request each, then silence), and reads the server's resident set size from
/proc/PID/status before and after. The difference divided by N is the cost of one
idle connection: the transport, the protocol objects, the handler task and its
buffers.

Usage::

    .venv/bin/python benchmarks/memory_idle.py            # 2,000 connections
    .venv/bin/python benchmarks/memory_idle.py -n 5000 --loop uvloop

Linux only (it reads /proc). The servers use their library's defaults; the raw
clients offer no compression, so no server keeps a compression context. epws is
measured in both of its styles: ``epws`` with an ``async`` handler (a task per
connection, the README's quick start) and ``epws-callback`` with a plain-function
handler (callback mode: no task per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

LIBRARIES = ("epws", "epws-callback", "websockets")


def raise_fd_limit(wanted: int) -> None:
    """Each connection is one fd here and one in the server: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        sys.exit(f"need {wanted} file descriptors, the hard limit allows {soft}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


# ---------------------------------------------------------------- the server side


async def run_server(library: str) -> None:
    """Serve an echo endpoint on a free port, print the port, run until killed."""
    if library.startswith("epws"):
        import epws

        async def epws_echo(conn: epws.Conn) -> None:
            async for message in conn:
                await conn.send(message)

        def epws_echo_callback(conn: epws.Conn) -> None:
            conn.on_message = conn.send_nowait

        handler = epws_echo_callback if library == "epws-callback" else epws_echo
        server = await epws.serve(handler, "127.0.0.1", 0, backlog=4096)
        port = server.port
    else:
        from websockets.asyncio.server import ServerConnection, serve

        async def ws_echo(ws: ServerConnection) -> None:
            async for message in ws:
                await ws.send(message)

        ws_server = await serve(ws_echo, "127.0.0.1", 0, compression=None, backlog=4096)
        port = next(iter(ws_server.sockets)).getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()


def server_main(library: str, loop: str, n: int) -> None:
    raise_fd_limit(n + 100)
    if loop == "uvloop":
        import uvloop

        uvloop.run(run_server(library))
    else:
        asyncio.run(run_server(library))


# ---------------------------------------------------------------- the client side


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def open_idle(port: int, n: int, batch: int = 200) -> list[socket.socket]:
    """Open n upgraded connections, ``batch`` handshakes in flight at a time."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, upgrade_request(port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ConnectionError("server closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        return sock

    for start in range(0, n, batch):
        socks += await asyncio.gather(*(one() for _ in range(min(batch, n - start))))
    return socks


def measure(library: str, n: int, loop: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--serve", library, "--loop", loop, "-n", str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        time.sleep(0.5)  # let the server settle after start-up
        before = rss_bytes(proc.pid)
        socks = asyncio.run(open_idle(port, n))
        time.sleep(1.0)  # handler tasks reach their first await; allocator settles
        after = rss_bytes(proc.pid)
        proc.kill()  # before the clients go, so the server logs no dropped connections
        proc.wait()
        for sock in socks:
            sock.close()
        return {
            "library": library,
            "connections": n,
            "rss_before": before,
            "rss_after": after,
            "per_connection": (after - before) / n,
        }
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="idle connections (default 2000)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--serve", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=LIBRARIES, help="measure one library")
    args = parser.parse_args()
    if args.serve:
        server_main(args.serve, args.loop, args.n)
        return
    raise_fd_limit(args.n + 100)
    gc.collect()
    print(f"idle connections: {args.n}, loop: {args.loop}, python {sys.version.split()[0]}")
    print(f"{'library':<12}{'RSS before':>14}{'RSS after':>14}{'per connection':>18}")
    for library in [args.only] if args.only else LIBRARIES:
        r = measure(library, args.n, args.loop)
        print(
            f"{r['library']:<12}{r['rss_before'] / 2**20:>11.1f} MiB"
            f"{r['rss_after'] / 2**20:>11.1f} MiB"
            f"{r['per_connection'] / 1024:>14.1f} KiB"
        )


if __name__ == "__main__":
    main()

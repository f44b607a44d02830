"""permessage-deflate costs: memory per connection, CPU per message, broadcast, loopback.

Usage::

    .venv/bin/python benchmarks/compression.py            # about 30 s on one core
    .venv/bin/python benchmarks/compression.py -n 2000 --loop uvloop

What each part measures, and why this way:

* **memory**: N server-side sans-I/O connections negotiated with the setting, each
  after receiving one compressed message and sending one (zlib state is created
  lazily, so an idle connection that never compressed would flatter the figure).
  Measured with tracemalloc, which also sees zlib's internal allocations (CPython
  gives zlib its raw allocator, which tracemalloc traces). Reported per connection,
  above the same connections without compression.
* **cpu**: one server compressing and one client inflating, in-process, no sockets:
  the codec's own cost per message and the bytes saved on the wire.
* **broadcast**: one PreparedMessage written to N connections (frame_for), which is
  the work of ``epws.broadcast`` apart from the transport writes.
* **loopback**: request/response round trips between an epws client and server on
  127.0.0.1, the end-to-end figure with both codecs and the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import tracemalloc
from typing import Any

import epws
from epws.prepared import PreparedMessage
from epws.protocol import Protocol, Side
from epws.protocol.deflate import DeflateCodec, PerMessageDeflate
from epws.protocol.http11 import Headers, Request, Response

TAKEOVER = {"server_no_context_takeover": False, "client_no_context_takeover": False}
SETTINGS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "default (no takeover, level 1)": {},
    "no takeover, level 6": {"level": 6},
    "takeover, 15 bits, mem 8": dict(TAKEOVER),
    "takeover, 12 bits, mem 5": {
        **TAKEOVER,
        "server_max_window_bits": 12,
        "client_max_window_bits": 12,
        "mem_level": 5,
    },
    "takeover, 10 bits, mem 4": {
        **TAKEOVER,
        "server_max_window_bits": 10,
        "client_max_window_bits": 10,
        "mem_level": 4,
    },
}


def chat_messages(count: int, seed: int = 1) -> list[bytes]:
    """JSON chat lines (~150 bytes), the kind of traffic the chat server carries."""
    rnd = random.Random(seed)
    words = [
        "the",
        "a",
        "to",
        "and",
        "you",
        "I",
        "it",
        "is",
        "that",
        "hello",
        "room",
        "anyone",
        "here",
        "okay",
        "thanks",
        "lol",
        "yes",
        "no",
        "what",
        "when",
        "meeting",
        "tomorrow",
        "deploy",
        "build",
        "failed",
        "passed",
        "review",
        "merge",
        "please",
    ]
    out = []
    for i in range(count):
        text = " ".join(rnd.choice(words) for _ in range(rnd.randrange(4, 20)))
        msg = {"type": "message", "room": "general", "user": f"user{rnd.randrange(500)}"}
        out.append(json.dumps({**msg, "id": 100000 + i, "text": text}).encode())
    return out


def big_message(seed: int = 2) -> bytes:
    """A 16 KB JSON history page."""
    return b"[" + b",".join(chat_messages(110, seed)) + b"]"


def negotiate(settings: dict[str, Any] | None) -> tuple[DeflateCodec | None, DeflateCodec | None]:
    if settings is None:
        return None, None
    pmd = PerMessageDeflate(**settings)
    offer = Headers([("Sec-WebSocket-Extensions", pmd.client_offer())])
    server_codec, header = pmd.server_negotiate(Request("GET", "/", "HTTP/1.1", offer))
    assert server_codec is not None and header is not None
    answer = Headers([("Sec-WebSocket-Extensions", header)])
    client_codec = pmd.client_accept(Response(101, "Switching Protocols", answer))
    return server_codec, client_codec


def memory(n: int) -> dict[str, float]:
    msg = chat_messages(1)[0] * 2  # ~300 bytes: over the threshold
    result: dict[str, float] = {}
    for name, settings in SETTINGS.items():
        # Client frames first, outside the measurement.
        frames = []
        for _ in range(n):
            _, client_codec = negotiate(settings)
            frames.append(Protocol(Side.CLIENT, codec=client_codec).send_binary(msg))
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        conns = []
        for frame in frames:
            server_codec, _ = negotiate(settings)
            conn = Protocol(Side.SERVER, max_size=1 << 20, codec=server_codec)
            assert conn.receive_data(frame) == [msg]
            conn.send_binary(msg)
            conns.append(conn)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        result[name] = used / n
        del conns, frames
    return result


def cpu(kind: str, messages: list[bytes], rounds: int) -> dict[str, tuple[float, float]]:
    result = {}
    for name, settings in SETTINGS.items():
        server_codec, client_codec = negotiate(settings)
        server = Protocol(Side.SERVER, max_size=None, codec=server_codec)
        client = Protocol(Side.CLIENT, max_size=None, codec=client_codec)
        wire = raw = 0
        start = time.perf_counter()
        for _ in range(rounds):
            for m in messages:
                frame = server.send_binary(m)
                client.receive_data(frame)
                wire += len(frame)
                raw += len(m)
        elapsed = time.perf_counter() - start
        result[name] = (elapsed / (rounds * len(messages)) * 1e6, wire / raw)
    return result


def broadcast(n: int, payload: bytes) -> dict[str, float]:
    result = {}
    for name, settings in SETTINGS.items():
        conns = [Protocol(Side.SERVER, codec=negotiate(settings)[0]) for _ in range(n)]
        times = []
        for _ in range(5):
            message = PreparedMessage(epws.MessageType.TEXT, payload)
            start = time.perf_counter()
            for conn in conns:
                message.frame_for(conn)
            times.append(time.perf_counter() - start)
        result[name] = min(times) * 1e3
    return result


async def loopback(rounds: int, payload: bytes) -> dict[str, float]:
    result = {}
    for name, settings in SETTINGS.items():
        pmd = None if settings is None else PerMessageDeflate(**settings)

        async def echo(conn: epws.Conn) -> None:
            async for message in conn:
                await conn.send(message)

        server = await epws.serve(echo, "127.0.0.1", 0, compression=pmd)
        async with server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with epws.connect(url, compression=pmd) as conn:
                for _ in range(100):  # warm-up
                    await conn.send(payload)
                    await conn.recv()
                start = time.perf_counter()
                for _ in range(rounds):
                    await conn.send(payload)
                    await conn.recv()
                result[name] = rounds / (time.perf_counter() - start)
            await server.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="connections (memory, broadcast)")
    parser.add_argument("--rounds", type=int, default=3000, help="loopback round trips")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, zlib {__import__('zlib').ZLIB_RUNTIME_VERSION}")

    print(f"\n## Memory per server connection, {args.n} connections (tracemalloc)\n")
    mem = memory(args.n)
    print("| setting | bytes/conn | above off |\n| --- | ---: | ---: |")
    for name, value in mem.items():
        print(f"| {name} | {value:,.0f} | {value - mem['off']:,.0f} |")

    chat = chat_messages(2000)
    print(
        f"\n## CPU per message, compress + inflate in-process (chat: {len(chat)} messages, "
        f"avg {sum(map(len, chat)) // len(chat)} B; page: {len(big_message())} B)\n"
    )
    small = cpu("chat", chat, 3)
    large = cpu("page", [big_message(s) for s in range(20)], 10)
    print("| setting | chat µs/msg | chat wire/raw | page µs/msg | page MB/s | page wire/raw |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    page_len = len(big_message())
    for name in SETTINGS:
        (us, ratio), (pus, pratio) = small[name], large[name]
        print(
            f"| {name} | {us:.1f} | {ratio:.2f} | {pus:.0f} | {page_len / pus:.0f} | {pratio:.2f} |"
        )

    payload = b"".join(chat[:3])
    print(f"\n## Broadcast of one {len(payload)}-byte PreparedMessage to {args.n} connections\n")
    bc = broadcast(args.n, payload)
    print("| setting | ms per broadcast |\n| --- | ---: |")
    for name, ms in bc.items():
        print(f"| {name} | {ms:.2f} |")

    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    print(f"\n## Loopback round trips of a {len(payload)}-byte message ({args.loop})\n")
    lb = asyncio.run(loopback(args.rounds, payload))
    print("| setting | round trips/s |\n| --- | ---: |")
    for name, rate in lb.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()

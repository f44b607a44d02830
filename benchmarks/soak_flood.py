"""One flooder against the chat: what it does to its room and to another room.

A client that reads its own echoes sends as fast as the connection takes for
``--seconds``; a member of its room reads only every 200 ms (a busy browser tab); a
client in another room sends one line every 50 ms and measures its echo. Run once
with the default rate limit and once without (``--rate 0``)::

    .venv/bin/python benchmarks/soak_flood.py
    .venv/bin/python benchmarks/soak_flood.py --rate 0

Prints what the flooder sent, how it was closed, whether the member survived, and
the latency in the other room (p50, p90). Bounded by ``--seconds`` (at most 60).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics

import epws
from epws_chat.client import Settings
from epws_chat.server import start_chat


async def run(settings: Settings, seconds: float) -> str:
    chat = await start_chat(settings, "127.0.0.1", 0)
    base = f"ws://127.0.0.1:{chat.port}/ws"
    flooder = await epws.connect(base + "?room=busy")
    member = await epws.connect(base + "?room=busy")
    calm = await epws.connect(base + "?room=calm")
    stop = asyncio.Event()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        with contextlib.suppress(epws.ConnectionClosed):
            async for _ in flooder:
                pass

    async def slow_reader() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            with contextlib.suppress(TimeoutError, epws.ConnectionClosed):
                while True:
                    async with asyncio.timeout(0.01):
                        await member.recv()

    async def probe() -> None:
        while not stop.is_set():
            started = loop.time()
            await calm.send("p")
            await calm.recv()
            latencies.append(loop.time() - started)
            await asyncio.sleep(0.05)

    async def flood() -> int:
        sent = 0
        with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
            while not stop.is_set():
                for _ in range(100):
                    flooder.send_nowait("f" * 300)
                    sent += 1
                await asyncio.sleep(0)
        return sent

    tasks = [asyncio.create_task(c) for c in (drain(), slow_reader(), probe())]
    flooding = asyncio.create_task(flood())
    await asyncio.sleep(seconds)
    stop.set()
    sent = await flooding
    await asyncio.sleep(0.3)
    for task in tasks:
        task.cancel()
    port = member.local_address[1]
    alive = any(c.conn.remote_address[1] == port for c in chat.hub.clients)
    q = statistics.quantiles(latencies, n=10)
    await chat.close(timeout=1)
    return (
        f"rate={settings.rate:g}/s: flooder sent {sent}, close code {flooder.close_code}, "
        f"member still in its room: {alive}, other room p50 {q[4] * 1000:.1f} ms, "
        f"p90 {q[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=Settings().rate)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if not 0 < args.seconds <= 60:
        parser.error("--seconds: 0-60")
    print(asyncio.run(run(Settings(rate=args.rate), args.seconds)))


if __name__ == "__main__":
    main()

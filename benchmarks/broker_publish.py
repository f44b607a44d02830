"""The Redis broker's publish path alone: messages/s and CPU per message.

Starts its own ``redis-server`` on a free port, one :class:`RedisBroker` subscribed
to ``--rooms`` rooms, publishes ``--messages`` lines round-robin (yielding to the
loop every 500, as a busy chat does) and waits until every one is delivered back.
Prints the rate and this process's CPU time per message (steadier than the rate on a
shared machine; Redis's own CPU is not counted).

    PYTHONPATH=src:chat/src python benchmarks/broker_publish.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

from epws_chat.brokers import BrokerError, ChatMessage
from epws_chat.brokers.redis import RedisBroker
from epws_chat.metrics import Counters


async def run(port: int, messages: int, rooms: int) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", timeout=5.0)
    got = 0
    done = asyncio.Event()

    def deliver(_message: ChatMessage) -> None:
        nonlocal got
        got += 1
        if got == messages:
            done.set()

    await broker.start(deliver, stats=Counters())
    try:
        await broker.wait_connected()
        for room in range(rooms):
            broker.subscribe(f"r{room}")
        for room in range(rooms):
            await broker.history(f"r{room}", after=None, limit=1)  # every room live
        errors: list[BrokerError] = []
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(messages):
            broker.publish(f"r{i % rooms}", "n", "hello world", errors.append)
            if i % 500 == 499:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"{messages / elapsed:,.0f} messages/s, {1e6 * used / messages:.1f} us CPU "
            f"per message, {len(errors)} errors"
        )
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=10)
    args = parser.parse_args()
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as directory:
        command = [executable, "--port", str(port), "--bind", "127.0.0.1"]
        server = subprocess.Popen(
            [*command, "--save", "", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            asyncio.run(run(port, args.messages, args.rooms))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()

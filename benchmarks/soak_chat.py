"""Soak test of the chat: every message id accounted for, memory watched, bounded.

Starts its own ``redis-server`` (no persistence, temporary directory) and
``epws-chat --workers N --broker redis://...``, then runs ``--clients`` JSON clients
(``epws.chat.v1``) in ``--rooms`` rooms for ``--minutes``. Each client sends
``--rate`` lines per second with a unique text; a share of the clients reconnect now
and then (``--reconnect-every``) and resume with ``after=<last id>``, as the page does.

At the end, for every client that was never evicted or refused:

* ``lost``: lines accepted in its room while it was a member (or that its resume
  covered) that it never received; must be 0, unless the server told it that some
  messages may be missing (``missed`` notices are counted apart);
* ``dup``: lines received twice (must be 0);
* server memory: RSS of each worker after the warm-up and at the end.

Usage::

    .venv/bin/python benchmarks/soak_chat.py --minutes 10 --workers 2

Exit status 0 if nothing was lost or duplicated, 1 otherwise. Bounded in clients
(<= 500), rate (<= 50/s per client) and minutes (<= 120).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import epws

PROTOCOL = "epws.chat.v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The worker processes of the supervisor ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Stats:
    sent: int = 0
    accepted: int = 0
    refused: int = 0  # sender got an error line for its own message
    received: int = 0
    dup: int = 0
    missed_notices: int = 0
    reconnects: int = 0
    evicted: int = 0


@dataclass
class Member:
    """One client's view: what it received, and the windows it was a member."""

    index: int
    room: str
    seen: set[str] = field(default_factory=set)
    last_id: str | None = None
    closed_unexpectedly: bool = False
    missed: bool = False


class Soak:
    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args = args
        self.port = port
        self.stats = Stats()
        self.members = [Member(i, f"soak{i % args.rooms}") for i in range(args.clients)]
        # Per room: text -> id for every line the server accepted (its sender saw it).
        self.accepted: dict[str, dict[str, str]] = {m.room: {} for m in self.members}
        self.stop = asyncio.Event()

    def url(self, member: Member) -> str:
        query = f"room={member.room}&name=c{member.index}"
        if member.last_id:
            query += f"&after={member.last_id}"
        return f"ws://127.0.0.1:{self.port}/ws?{query}"

    async def run_member(self, member: Member) -> None:
        rng = random.Random(member.index)
        seq = 0
        reconnect = member.index % 4 == 0 and self.args.reconnect_every > 0
        while not self.stop.is_set():
            try:
                conn = await epws.connect(self.url(member), subprotocols=[PROTOCOL])
            except (OSError, epws.HandshakeError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            until = time.monotonic() + (
                self.args.reconnect_every * rng.uniform(0.5, 1.5) if reconnect else 1e9
            )
            reader = asyncio.create_task(self.read(member, conn))
            try:
                period = 1.0 / self.args.rate
                while not self.stop.is_set() and time.monotonic() < until and not reader.done():
                    text = f"c{member.index}-{seq}"
                    seq += 1
                    await conn.send(json.dumps({"type": "message", "text": text}))
                    self.stats.sent += 1
                    await asyncio.sleep(period * rng.uniform(0.5, 1.5))
                await asyncio.sleep(1.0)  # let the last echoes arrive
            except epws.ConnectionClosed:
                pass
            finally:
                await conn.close()
                with contextlib.suppress(asyncio.CancelledError, epws.ConnectionClosed):
                    await reader
            if conn.close_code not in (1000, 1001, 1005, None) and not self.stop.is_set():
                member.closed_unexpectedly = True
            if self.stop.is_set():
                return
            self.stats.reconnects += 1

    async def read(self, member: Member, conn: epws.Conn) -> None:
        async for frame in conn:
            assert isinstance(frame, str)
            for line in frame.split("\n"):
                item: dict[str, Any] = json.loads(line)
                kind = item.get("type")
                if kind == "message":
                    text = item["text"]
                    if text in member.seen:
                        self.stats.dup += 1
                        continue
                    member.seen.add(text)
                    member.last_id = item["id"]
                    self.stats.received += 1
                    if text.startswith(f"c{member.index}-"):
                        self.accepted[member.room][text] = item["id"]
                        self.stats.accepted += 1
                elif kind == "error":
                    if item.get("missed"):
                        member.missed = True
                        self.stats.missed_notices += 1
                    elif "not delivered" in item.get("text", ""):
                        self.stats.refused += 1


async def main_async(args: argparse.Namespace) -> int:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not installed")
    chat = shutil.which("epws-chat") or str(Path(sys.executable).parent / "epws-chat")
    with tempfile.TemporaryDirectory() as tmp:
        rport = free_port()
        redis_proc = await asyncio.create_subprocess_exec(
            redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log"),
        )  # fmt: skip
        await asyncio.sleep(0.5)
        cport = free_port()
        chat_proc = await asyncio.create_subprocess_exec(
            chat, "--addr", f"127.0.0.1:{cport}", "--workers", str(args.workers),
            "--broker", f"redis://127.0.0.1:{rport}/0", "--log-level", "WARNING",
            "--shutdown-timeout", "2", "--max-connections-per-address", "0",
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert chat_proc.stderr is not None
        pids: list[int] = []
        log_lines: list[str] = []

        async def read_log() -> None:
            assert chat_proc.stderr is not None
            async for raw in chat_proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                log_lines.append(line)

        log_task = asyncio.create_task(read_log())
        try:
            async with asyncio.timeout(30):
                while len(pids) < args.workers or not accepts(cport):
                    await asyncio.sleep(0.2)
                    pids[:] = children(chat_proc.pid)
            soak = Soak(args, cport)
            tasks = [asyncio.create_task(soak.run_member(m)) for m in soak.members]
            started = time.monotonic()
            await asyncio.sleep(min(60.0, args.minutes * 60 / 5))  # warm-up
            warm = {pid: rss_kb(pid) for pid in pids}
            samples: list[tuple[float, dict[int, int]]] = [(time.monotonic() - started, warm)]
            end = started + args.minutes * 60
            while time.monotonic() < end:
                await asyncio.sleep(min(30.0, max(0.0, end - time.monotonic())))
                samples.append((time.monotonic() - started, {p: rss_kb(p) for p in pids}))
                print(
                    f"t={samples[-1][0]:6.0f}s sent={soak.stats.sent} "
                    f"received={soak.stats.received} rss_kb={samples[-1][1]}",
                    flush=True,
                )
            soak.stop.set()
            await asyncio.gather(*tasks)
        finally:
            chat_proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await chat_proc.wait()
            log_task.cancel()
            redis_proc.terminate()
            await redis_proc.wait()

    lost_total = 0
    lost_clients = 0
    for member in soak.members:
        if member.closed_unexpectedly or member.missed:
            continue
        room = soak.accepted[member.room]
        lost = sum(1 for text in room if text not in member.seen)
        lost_total += lost
        lost_clients += lost > 0
    skipped = sum(1 for m in soak.members if m.closed_unexpectedly or m.missed)
    s = soak.stats
    print("== soak result ==")
    print(f"minutes={args.minutes} workers={args.workers}", end=" ")
    print(f"clients={args.clients} rooms={args.rooms}")
    print(f"sent={s.sent} accepted={s.accepted} refused={s.refused} received={s.received}")
    print(f"reconnects={s.reconnects} missed_notices={s.missed_notices} dup={s.dup}")
    print(f"clients closed unexpectedly or told 'missed' (not counted): {skipped}")
    print(f"lost={lost_total} (in {lost_clients} clients)")
    first, last = samples[0][1], samples[-1][1]
    for pid in pids:
        print(f"worker pid {pid}: rss after warm-up {first.get(pid, 0)} kB,", end=" ")
        print(f"end {last.get(pid, 0)} kB")
    errors = [line for line in log_lines if " ERROR " in line or "Traceback" in line]
    print(f"server ERROR lines: {len(errors)}")
    for line in errors[:5]:
        print("  ", line)
    return 0 if lost_total == 0 and s.dup == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2.0, help="lines/s per client")
    parser.add_argument(
        "--reconnect-every", type=float, default=30.0, help="seconds (a quarter of the clients)"
    )
    args = parser.parse_args()
    if not (0 < args.clients <= 500 and 0 < args.rate <= 50 and 0 < args.minutes <= 120):
        parser.error("bounded: clients 1-500, rate up to 50/s, minutes up to 120")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

"""Launching Debian's Chromium under Playwright, and the chat as a real process.

Playwright's own browser downloads are never used (``playwright install`` is not
run anywhere): the test drives /usr/bin/chromium, which scripts/setup installs.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from epws_chat.brokers import Broker
from epws_chat.client import Settings
from epws_chat.server import Chat, start_chat

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
EPWS_CHAT = Path(sys.executable).parent / "epws-chat"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium(user_data_dir: Path, **options: Any) -> Iterator[Any]:
    """A fresh persistent Chromium context; FAILS (does not skip) without Chromium."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: the browser test needs Debian's chromium "
            "package (bash scripts/setup installs it; or apt-get install chromium)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            **options,
        )
        try:
            yield context
        finally:
            context.close()


class ChatServer:
    """``epws-chat`` in a child process; its log lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        assert EPWS_CHAT.exists(), f"{EPWS_CHAT} is missing: pip install -e . first"
        self.proc = subprocess.Popen(
            [str(EPWS_CHAT), "--addr", "127.0.0.1:0", "--loop", "asyncio", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        match = self.wait_for(r"listening on (\w+)://[^:]+:(\d+)/", timeout=15)
        self.scheme, self.port = match.group(1), int(match.group(2))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10) -> re.Match[str]:
        """The ``count``-th log line matching ``pattern``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in map(re.compile(pattern).search, self.lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no {count}x {pattern!r} in log: {self.lines}")
                self._cond.wait(left)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._done()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._done()

    def _done(self) -> None:
        self._thread.join(timeout=5)
        if not self._thread.is_alive() and self.proc.stderr is not None:
            self.proc.stderr.close()  # read to its end: no pipe left for the collector


class ChatThread:
    """Chat servers in this process, on an event loop in a thread of their own.

    Playwright's sync API owns the test's thread; the servers run beside it. Unlike
    :class:`ChatServer` this can stop a server and start another on the same port
    with the same broker object, which is a restart that keeps the history.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.chats: list[Chat] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(
        self,
        port: int = 0,
        broker: Broker | None = None,
        say: Sequence[str] = (),
        settings: Settings | None = None,
    ) -> Chat:
        """Start a chat; the lines of ``say`` are published as it starts listening,
        before any page can have joined again."""

        async def go() -> Chat:
            chat = await start_chat(settings, "127.0.0.1", port, broker=broker)
            for line in say:
                chat.hub.broadcast(line, name="carol")
            return chat

        chat = self.run(go())
        self.chats.append(chat)
        return chat

    def stop(self, chat: Chat) -> None:
        self.run(chat.close(timeout=2))

    def close(self) -> None:
        try:
            for chat in self.chats:
                self.run(chat.close(timeout=2))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            self.loop.close()
